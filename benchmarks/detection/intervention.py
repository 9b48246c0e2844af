"""Truth by intervention: does the trained checkpoint use its planted cue?

Why: what a variant teaches a model is not fixed by its recipe. Two training runs of one
recipe can give a model that leans on the marker and one that ignores it, so scoring the
audit against the recipe (or against the audit's own metrics) is circular. Here every test
study is rendered a second time without its cue (the generator run again with the same
seed and the cue switched off: marker not drawn, site phrase left out, lab column not
shifted), both versions go through the checkpoint, and the change in its decisions is the
truth the audit is scored against.

Measured on the studies whose inputs the removal changed (the cue carriers): the share of
decisions (p >= 0.5) that flip, and the mean |delta p|. Verdict: ``used`` at
:data:`USED_MIN_FLIP` flips or more, ``not_used`` below :data:`NOT_USED_MAX_FLIP` flips with
mean |delta p| below :data:`NOT_USED_MAX_DP`, ``between`` otherwise (left out of scoring);
``no_cue`` when the variant plants nothing removable (scored as not used).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "USED_MIN_FLIP",
    "NOT_USED_MAX_FLIP",
    "NOT_USED_MAX_DP",
    "Truth",
    "truth_verdict",
    "changed_rows",
    "measure",
    "checkpoint_probabilities",
]

#: a cue is "used" when removing it flips at least this share of the carriers' decisions
USED_MIN_FLIP = 0.05
#: a cue is "not used" when removing it flips fewer than this share of decisions ...
NOT_USED_MAX_FLIP = 0.01
#: ... and moves the carriers' probabilities by less than this on average
NOT_USED_MAX_DP = 0.02

Verdict = Literal["used", "not_used", "between", "no_cue"]


@dataclass(frozen=True)
class Truth:
    """What removing the cue did to the checkpoint's test decisions."""

    n_test: int
    n_changed: int  # test studies whose inputs the removal changed
    flip_rate: float | None  # share of the changed studies whose decision flipped
    mean_abs_dp: float | None  # mean |p(with cue) - p(without)| over the changed studies
    verdict: Verdict

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def truth_verdict(flip_rate: float | None, mean_abs_dp: float | None) -> Verdict:
    """``used`` / ``not_used`` / ``between`` from the measured effect (``no_cue`` if none)."""
    if flip_rate is None or mean_abs_dp is None:
        return "no_cue"
    if flip_rate >= USED_MIN_FLIP:
        return "used"
    if flip_rate < NOT_USED_MAX_FLIP and mean_abs_dp < NOT_USED_MAX_DP:
        return "not_used"
    return "between"


def changed_rows(with_cue: Path, without_cue: Path, ids: list[str]) -> np.ndarray:
    """Boolean mask over ``ids``: the study's image bytes, report or any lab value differ
    between the two generated folders (each with ``manifest.csv``)."""
    import pandas as pd

    a = pd.read_csv(with_cue / "manifest.csv").set_index("id").loc[ids]
    b = pd.read_csv(without_cue / "manifest.csv").set_index("id").loc[ids]
    skip = {"image_path", "mask_path"}
    cols = [c for c in a.columns if c not in skip and c in b.columns]
    differs = np.zeros(len(ids), dtype=bool)
    for c in cols:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        same = (x == y) | (pd.isna(x) & pd.isna(y))
        differs |= ~np.asarray(same, dtype=bool)
    for i, (pa, pb) in enumerate(zip(a["image_path"], b["image_path"], strict=True)):
        if not differs[i]:
            differs[i] = (with_cue / pa).read_bytes() != (without_cue / pb).read_bytes()
    return differs


def checkpoint_probabilities(
    config: Any, manifests: dict[str, Path | None]
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Test-split probabilities of the audited model (config: the audit's ``AuditConfig``)
    on each manifest of ``manifests`` (name -> manifest, None: the config's own), the model
    loaded once. Returns the test ids, their labels (the config's manifest) and name ->
    probabilities; every manifest must hold the same test studies in the same order."""
    import torch

    from mmaudit.engine.data import AuditDataset
    from mmaudit.engine.loading import load_model

    adapter = load_model(config.model, tuple(config.data.modalities), config.runtime)
    ids: list[str] | None = None
    labels = np.empty(0, dtype=int)
    out: dict[str, np.ndarray] = {}
    for name, manifest in manifests.items():
        data = (
            config.data
            if manifest is None
            else config.data.model_copy(update={"manifest": manifest})
        )
        ds = AuditDataset(data, config.runtime)
        probs = []
        with torch.no_grad():
            for k in range(0, len(ds), 64):
                batch = ds.collate([ds[i] for i in range(k, min(len(ds), k + 64))])
                logits = adapter.logits(batch)
                if logits.shape[1] == 1:
                    probs.append(torch.sigmoid(logits[:, 0]))
                else:  # two logits for a binary target: the positive class's softmax share
                    probs.append(torch.softmax(logits, dim=1)[:, 1])
        these = [str(x) for x in ds.frame[data.id].tolist()]
        if ids is None:
            ids = these
            labels = ds.frame[data.target.column].to_numpy().astype(int)
        elif these != ids:
            raise RuntimeError(f"{manifest}: the render has other test studies")
        out[name] = torch.cat(probs).numpy().astype(np.float64)
    return ids or [], labels, out


def measure(audit_config: Path, with_cue: Path, without_cue: Path | None) -> Truth:
    """Run the audited checkpoint on the test studies with and without their cue.

    ``audit_config``: the run's audit YAML (model and test data); ``with_cue`` /
    ``without_cue``: the generated folders (``without_cue`` None: nothing to remove).
    One logit is read through a sigmoid, two through a softmax (the positive class).
    """
    from mmaudit.engine.config_file import load_config

    cfg = load_config(audit_config)
    manifests = {"with": None} | (
        {} if without_cue is None else {"without": without_cue / "manifest.csv"}
    )
    ids, _, probs = checkpoint_probabilities(cfg, manifests)
    if without_cue is None:
        return Truth(len(ids), 0, None, None, "no_cue")
    p, q = probs["with"], probs["without"]
    changed = changed_rows(with_cue, without_cue, ids)
    if not changed.any():
        return Truth(len(ids), 0, None, None, "no_cue")
    flips = float(np.mean((p[changed] >= 0.5) != (q[changed] >= 0.5)))
    dp = float(np.mean(np.abs(p[changed] - q[changed])))
    return Truth(len(ids), int(changed.sum()), flips, dp, truth_verdict(flips, dp))
