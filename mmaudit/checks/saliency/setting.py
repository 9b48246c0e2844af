"""The setting every stage of the ``saliency`` check reads: the parameters, the image rows,
the explained class per row, the cached non-image outputs, the CAM layers and methods that
can run, the effective threshold rules, and the bootstrap every CI comes from.

Why one immutable record: the stages share these inputs but never change them, so each
stage takes the setting plus the data earlier stages returned, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dc_replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmaudit.checks.contract import AuditContext, CheckOutput, ThresholdRule
from mmaudit.checks.saliency.layers import choose_cam_layers
from mmaudit.checks.saliency.params import CAMS, SaliencyParams
from mmaudit.methods.cams import grid_info
from mmaudit.methods.region_scan import stratified_subset
from mmaudit.methods.stats import CountBootstrap, Estimate

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.data import AuditDataset


@dataclass(frozen=True)
class Setting:
    """What every stage reads (see the module docstring); built once by :func:`prepare`."""

    ctx: AuditContext
    params: SaliencyParams
    #: dataset rows with an image, ascending
    rows: np.ndarray
    #: model input side (rows, cols) and the normalised black image (1, C, 1, 1)
    size: tuple[int, int]
    black: torch.Tensor
    has_masks: bool
    kind: str
    #: the label / logit column explained for binary and multilabel targets
    column: int
    #: "off_roi" with ROI masks, "border" without
    stat_key: str
    bs: CountBootstrap
    #: logits of the cached sweep (every dataset row) and the explained class per row
    logits: np.ndarray
    cls_all: np.ndarray
    #: cached outputs of the non-image encoders (they never run during attribution)
    fixed: dict[str, torch.Tensor]
    info: Any
    cam_layers: dict[str, str]
    methods: list[str]
    #: the seeded subset given IG / occlusion maps; None when neither runs
    ig_rows: np.ndarray | None
    #: the effective threshold rules (defaults updated by the YAML)
    rules: dict[str, ThresholdRule]

    @property
    def ds(self) -> AuditDataset:
        return self.ctx.dataset

    @property
    def adapter(self) -> ModelAdapter:
        return self.ctx.adapter

    def boot(self, values: np.ndarray, rows: np.ndarray) -> Estimate:
        """Mean of the finite values with a patient-grouped bootstrap CI."""
        return self.bs.mean(values, rows)

    def paired(self, a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> Estimate:
        """mean(b) - mean(a) over rows where both are finite, paired bootstrap CI and p."""
        return self.bs.diff(a, b, rows)

    def decision(self, logits: np.ndarray) -> np.ndarray:
        """Decided class per row (what a flip changes)."""
        if self.kind == "multiclass" and logits.shape[1] > 1:
            return logits.argmax(1)
        return (logits[:, self.column] > 0).astype(np.int64)

    def positive_score(self, logits: np.ndarray) -> np.ndarray:
        """The score AUROC is computed on (binary / multilabel column: its logit)."""
        if self.kind == "multiclass" and logits.shape[1] > 1:
            z = logits - logits.max(1, keepdims=True)
            return np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return logits[:, self.column]

    def labels(self, rows: np.ndarray) -> np.ndarray:
        """The label of ``rows`` (the explained column for multilabel targets)."""
        y = self.ds.target[rows]
        return y[:, self.column] if y.ndim == 2 else y

    def subset(self, n: int, salt: str, pool: np.ndarray | None = None) -> np.ndarray:
        """A seeded subset of ``n`` image rows (all when ``n`` is 0 or large), sorted."""
        return seeded_subset(self.ctx, self.rows if pool is None else pool, n, salt)


def has_site(s: Setting) -> bool:
    """Whether the audit has a ``site`` attribute (capped subsets are stratified by it)."""
    return "site" in getattr(s.ds.attributes, "columns", [])


def stratified_positions(s: Setting, n: int, salt: str) -> np.ndarray:
    """Positions in ``s.rows`` of a seeded subset of ``n`` image rows stratified by label
    and site (all positions when ``n`` is 0 or at least their number): what a capped stage
    tests, so that its cost is fixed at any N and its rows keep the audit's label and site
    mix."""
    labels = s.labels(s.rows).astype(str)
    site = s.ds.attributes["site"].iloc[s.rows].astype(str).to_numpy() if has_site(s) else ""
    return stratified_subset(np.char.add(labels, np.asarray(site, dtype=str)), n, s.ctx.rng(salt))


def image_rows(ctx: AuditContext) -> np.ndarray:
    """Dataset rows that have an image."""
    col = ctx.dataset.modalities.index("image")
    return np.flatnonzero(ctx.dataset.present[:, col])


def seeded_subset(ctx: AuditContext, pool: np.ndarray, n: int, salt: str) -> np.ndarray:
    """A seeded subset of ``n`` rows of ``pool`` (all when ``n`` is 0 or large), sorted."""
    if n <= 0 or n >= len(pool):
        return pool
    pick = ctx.rng(salt).choice(len(pool), n, replace=False)
    return np.sort(pool[pick])


def prepare(
    ctx: AuditContext, p: SaliencyParams, rows: np.ndarray, rules: dict[str, ThresholdRule]
) -> tuple[Setting, CheckOutput]:
    """The setting of one run on the image ``rows`` (at least two), and the notes and metrics
    of the CAM layer choice (``cam_layer``, ``layercam_layer``). ``Setting.methods`` lists
    the methods that can run; it is empty when none can."""
    ds = ctx.dataset
    kind = ctx.config.data.target.kind
    img_cfg = ctx.config.data.image
    assert img_cfg is not None
    channels = img_cfg.channels
    mean = np.broadcast_to(np.asarray(img_cfg.mean, dtype=np.float32), (channels,))
    std = np.broadcast_to(np.asarray(img_cfg.std, dtype=np.float32), (channels,))
    black = torch.from_numpy(((0.0 - mean) / std).copy()).view(1, -1, 1, 1)
    has_masks = bool(ds.mask_paths) and any(m is not None for m in ds.mask_paths)
    column = p.target_class if kind == "multilabel" else 0
    bs = CountBootstrap(ctx.groups, len(ds), p.n_boot, p.alpha, ctx.seed)
    logits = ctx.cache.sweep().logits
    cls_all = np.zeros(len(ds), dtype=np.int64)
    cls_all[rows] = explained_classes(logits[rows], ds.target[rows], p, kind, column)
    fixed = fixed_outputs(ctx)
    info = grid_info(ctx.adapter)
    layers, out = choose_cam_layers(ctx, p, rows, info)
    if ctx.adapter.detected.get("gradcam_layout") == "NHWC":
        info = dc_replace(info, layout="NHWC")
    methods = [m for m in p.methods if m not in CAMS or m in layers]
    slow = {"ig", "occlusion"} & set(methods)
    setting = Setting(
        ctx=ctx,
        params=p,
        rows=rows,
        size=(img_cfg.size, img_cfg.size),
        black=black,
        has_masks=has_masks,
        kind=kind,
        column=column,
        stat_key="off_roi" if has_masks else "border",
        bs=bs,
        logits=logits,
        cls_all=cls_all,
        fixed=fixed,
        info=info,
        cam_layers=layers,
        methods=methods,
        ig_rows=seeded_subset(ctx, rows, p.subset_samples, "saliency.ig") if slow else None,
        rules=rules,
    )
    return setting, out


def explained_classes(
    logits: np.ndarray, y: np.ndarray, p: SaliencyParams, kind: str, column: int
) -> np.ndarray:
    """The class explained for each row (see ``params.target``), from its logits and label."""
    n = len(logits)
    if kind == "multiclass":
        if p.target == "label":
            return y.astype(np.int64)
        if p.target == "positive":
            return np.full(n, logits.shape[1] - 1, dtype=np.int64)
        return logits.argmax(1).astype(np.int64)
    z = logits[:, column]
    if p.target == "label":
        lab = y[:, column] if y.ndim == 2 else y
        return lab.astype(np.int64)
    if p.target == "positive":
        return np.ones(n, dtype=np.int64)
    return (z > 0).astype(np.int64)


def fixed_outputs(ctx: AuditContext) -> dict[str, torch.Tensor]:
    """Cached outputs of the non-image encoders: they never run during attribution."""
    if not ctx.adapter.supports_hooks:
        return {}
    fixed = {}
    for m in ctx.dataset.modalities:
        if m != "image" and m in ctx.adapter.layers:
            fixed[m] = torch.from_numpy(np.array(ctx.cache.embeddings(m)))  # writable copy
    return fixed


def signed_score(logits: np.ndarray, cls: np.ndarray, column: int, kind: str) -> np.ndarray:
    """The explained score per row (numpy twin of ``image_forward.target_scores``)."""
    if logits.shape[1] == 1 or kind != "multiclass":
        z = logits[:, column]
        return np.where(cls == 1, z, -z)
    return logits[np.arange(len(cls)), cls]
