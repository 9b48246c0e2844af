"""The ``saliency`` check: planted shortcuts fail and clean models pass (toy models with a
known answer, then the bundled sample), the sanity check catches weight-independent maps,
and bad input (no conv layer, no masks, one class, dead gradients) never crashes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mmaudit.checks.contract import AuditContext, CheckOutput, Finding
from mmaudit.checks.findings import judge
from mmaudit.checks.registry import load_builtin_checks
from mmaudit.methods.stats import Estimate

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent  # the factories below are imported from here
S = 24  # toy image side
N = 96


@pytest.fixture(autouse=True, scope="module")
def _two_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(min(2, n))
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- toy models


class ToyNet(nn.Module):
    """conv (identity + 3x3 mean) -> ReLU -> a learned spatial read-out -> logit.

    ``focus="corner"`` reads only the top-left 4x4 corner (where site B burns a marker: the
    planted shortcut, outside the ROI); ``focus="centre"`` reads only the ROI, where the
    label lives; ``focus="both"`` reads both, the corner pixels 1.5x as strongly, so on
    images in [0, 1] site B's bright marker draws the attribution and site A's dim corner
    does not. The correct attribution is known: the read-out region. ``dead`` gives the
    conv a huge negative bias, so every activation and gradient is zero.
    """

    def __init__(self, focus: str, dead: bool = False, offset: float | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.weight[1, 0] = 1.0 / 9.0
            self.conv.bias.fill_(-100.0 if dead else 0.0)
        w = torch.zeros(2, S, S)
        if focus in ("centre", "both"):
            w[:, 8:16, 8:16] = 1.0
        if focus in ("corner", "both"):
            w[:, 1:5, 1:5] = 1.5 if focus == "both" else 1.0
        self.readout = nn.Parameter(w / w[0].sum())
        self.offset = (0.8 if focus == "corner" else 0.5) if offset is None else offset

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(image))
        return (4.0 * ((a * self.readout).sum(dim=(1, 2, 3)) / 2 - self.offset))[:, None]


class Toy(nn.Module):
    def __init__(
        self,
        focus: str = "corner",
        dead: bool = False,
        flat: bool = False,
        two: bool = False,
        offset: float | None = None,
    ) -> None:
        super().__init__()
        self.two = two  # two logits [-z, z]: a softmax (multiclass) model
        self.net: nn.Module = ToyNet(focus, dead, offset)
        if flat:  # no conv / token layer to hook: flatten -> linear on the same read-out
            readout = self.net.readout.detach()[0].reshape(-1)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(S * S, 1))
            with torch.no_grad():
                self.net[1].weight.copy_(4.0 * readout[None])
                self.net[1].bias.fill_(-4.0 * 0.5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        z = self.net(image)
        return torch.cat([-z, z], dim=1) if self.two else z


class Insensitive(nn.Module):
    """logit = sum of W * x with W nearly constant: its IG map is the input itself whatever
    W is, so randomising W leaves the maps unchanged (a failed sanity check by design)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(S * S, 1)
        with torch.no_grad():
            self.net.weight.copy_(1.0 + 0.01 * torch.randn(1, S * S))
            self.net.bias.fill_(0.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image.flatten(1)) / (S * S)


def build_toy(
    focus: str = "corner",
    dead: bool = False,
    flat: bool = False,
    two: bool = False,
    offset: float | None = None,
) -> nn.Module:
    """The factory the configs name as ``test_saliency:build_toy``."""
    return Toy(focus, dead, flat, two, offset).eval()


def build_vit() -> nn.Module:
    """A tiny ViT (timm, randomly initialised, nothing downloaded): 4x4 tokens of 6x6 px,
    two blocks of width 16."""
    from mmaudit.engine.models import ArchitectureSpec, ImageSpec, build_model

    spec = ArchitectureSpec(
        modalities=["image"],
        image=ImageSpec(
            timm_name="vit_tiny_patch16_224",
            img_size=S,
            timm_kwargs={"patch_size": 6, "embed_dim": 16, "depth": 2, "num_heads": 2},
        ),
        dim=8,
        num_outputs=1,
    )
    torch.manual_seed(0)
    return build_model(spec).eval()


def build_insensitive() -> nn.Module:
    return Insensitive().eval()


# ----------------------------------------------------------------------------- toy data


def write_toy_data(folder: Path, *, one_class_images: bool = False) -> Path:
    """24x24 images: a bright textured ROI square whose brightness carries the label, a 4x4
    marker in the top-left corner on every site-B image, site B mostly positive."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    site = np.array(["A", "B"] * (N // 2))
    label = np.where(site == "B", rng.random(N) < 0.8, rng.random(N) < 0.2).astype(int)
    for i in range(N):
        img = rng.normal(60, 8, (S, S))
        img[6:18, 6:18] = rng.normal(110 + 80 * label[i], 10, (12, 12))
        if site[i] == "B":
            img[1:5, 1:5] = 240
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"t{i}.png")
        mask = np.zeros((S, S), np.uint8)
        mask[6:18, 6:18] = 255
        Image.fromarray(mask).save(folder / "masks" / f"t{i}.png")
        image_cell = "" if one_class_images and label[i] == 0 else f"images/t{i}.png"
        rows.append(
            {
                "id": f"t{i}",
                "patient": f"q{i // 2}",
                "image_path": image_cell,
                "mask_path": f"masks/t{i}.png",
                "label": int(label[i]),
                "site": site[i],
                "sex": "F" if rng.random() < 0.5 else "M",
            }
        )
    manifest = folder / ("one_class.csv" if one_class_images else "manifest.csv")
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saliency_toy")
    write_toy_data(folder)
    write_toy_data(folder, one_class_images=True)
    return folder


FAST = {
    "subset_samples": 32,
    "ig_steps": 8,
    "sanity_samples": 16,
    "sanity_stages": 2,
    "faithfulness_samples": 16,
    "faithfulness_steps": 4,
    "hotspot_null": 50,
    "n_permutations": 50,
}


def toy_config(
    toy_dir: Path,
    *,
    factory: str = "build_toy",
    kwargs: dict[str, Any] | None = None,
    masks: bool = True,
    manifest: str = "manifest.csv",
    layers: dict[str, str] | None = None,
    target: dict[str, Any] | None = None,
    image: dict[str, Any] | None = None,
    checks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The raw config of an audit of the toy data; ``image`` updates the image config (e.g.
    mean / std), ``checks`` is the config's ``checks`` section (threshold overrides)."""
    image_cfg = {"column": "image_path", "size": S, "channels": 1, **(image or {})}
    if masks:
        image_cfg["roi_mask"] = "mask_path"
    return {
        "model": {
            "factory": f"test_saliency:{factory}",
            "kwargs": kwargs or {},
            "python_path": [str(TESTS)],
            "layers": {"image": "net"} if layers is None else layers,
        },
        "data": {
            "manifest": str(toy_dir / manifest),
            "id": "id",
            "patient": "patient",
            "target": target or {"column": "label"},
            "image": image_cfg,
            "attributes": {"site": {}, "sex": {}},
        },
        "runtime": {"device": "cpu", "batch_size": 32, "progress": False},
        "checks": checks or {},
    }


def toy_context(toy_dir: Path, **options: Any) -> AuditContext:
    """A context on the toy data (``options``: those of ``toy_config``)."""
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = AuditConfig.model_validate(toy_config(toy_dir, **options))
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


FIGURES = (
    "overlays_confident_positives",
    "overlays_most_off_roi",
    "mean_maps",
    "location_histograms",
    "randomisation_curve",
    "cluster_exemplars",
)


def run_check(ctx: AuditContext, **params: Any) -> tuple[CheckOutput, list[Finding]]:
    """Run the check with ``FAST`` params updated by ``params``; judge it with the rules the
    runner would use (the defaults updated by the config's thresholds)."""
    from mmaudit.checks.contract import merged_thresholds

    cls = load_builtin_checks()["saliency"]
    check = cls(cls.Params.model_validate({**FAST, **params}))
    reason = check.missing_requirements(ctx)
    assert reason is None, reason
    state = {k: v.clone() for k, v in ctx.adapter.module.state_dict().items()}
    modules = dict(ctx.adapter.module.named_modules())
    out = check.run(ctx)
    # the audited model is left exactly as it was: same modules, same weights, no hooks
    assert ctx.adapter.hook_count() == 0
    assert dict(ctx.adapter.module.named_modules()).keys() == modules.keys()
    assert all(m is modules[n] for n, m in ctx.adapter.module.named_modules())
    for k, v in ctx.adapter.module.state_dict().items():
        assert torch.equal(v, state[k]), k
    import matplotlib.pyplot as plt

    for fig in out.figures.values():
        plt.close(fig)
    cc = ctx.config.checks.get("saliency")
    rules = merged_thresholds(cls, cc.thresholds if cc else {}, "checks.saliency")
    return out, list(out.findings) + judge("saliency", out.metrics, rules)


def _value(metric: Any) -> float:
    return float(metric.value) if isinstance(metric, Estimate) else float(metric)


def _severities(findings: list[Finding]) -> dict[str, str]:
    return {f.rule: f.severity for f in findings if f.severity in ("warn", "fail")}


# ----------------------------------------------------------------------------- toy tests


@pytest.fixture(scope="module")
def toy_runs(toy_dir: Path) -> dict[str, tuple[CheckOutput, list[Finding]]]:
    runs = {}
    for focus in ("corner", "centre"):
        ctx = toy_context(toy_dir, kwargs={"focus": focus})
        runs[focus] = run_check(ctx)
    return runs


def test_toy_shortcut_fails_on_the_corner_and_is_located(toy_runs: Any) -> None:
    out, findings = toy_runs["corner"]
    assert _severities(findings).get("hotspot_used") == "fail"
    m = out.metrics
    worst = m["offroi_hotspot.method"]
    assert _value(m[f"hotspot.row.{worst}"]) < 0.25 and _value(m[f"hotspot.col.{worst}"]) < 0.25
    est = m["offroi_hotspot.flip_excess"]
    assert isinstance(est, Estimate) and est.value > 0.3 and est.null_p < 0.05
    # the analytically faithful maps (elementwise gradient x activation, IG) sit off the
    # ROI, far above chance and above the randomised model's, and pass the sanity check
    for method in ("hirescam", "ig"):
        assert _value(m[f"off_roi.{method}"]) > 0.99  # the analytic answer: all of it
        assert _value(m[f"off_roi_excess.{method}"]) == pytest.approx(0.25, abs=0.01)
        assert _value(m[f"off_roi_vs_random.{method}"]) > 0.0
        assert _value(m[f"sanity.spearman.{method}"]) < 0.5
    assert _severities(findings).get("off_roi_above_chance") == "warn"
    # Grad-CAM averages the gradient over space, so here it lights up every bright region
    # whatever the weights are: its maps survive randomisation best (not beyond the CI
    # limit on 16 maps, so it stays trusted; the insensitive model below fails outright)
    assert _value(m["sanity.similarity.gradcam"]) > _value(m["sanity.similarity.hirescam"])
    # IG is recomputed at every cascade stage, like the CAMs
    curve = out.tables["sanity_curve"]
    assert (curve["method"] == "ig").sum() == m["sanity.stages"] == 2
    # the per-sample table, the figures, the compact maps for `mmaudit diff`
    table = out.tables["per_sample"]
    assert len(table) == N and {"id", "gradcam.off_roi", "ig.delta", "cluster"} <= set(table)
    assert set(FIGURES) <= set(out.figures)
    assert out.arrays["map.gradcam"].shape == (N, 16, 16)
    assert "overlays_confident_positives" in out.private


def test_toy_clean_model_passes_and_points_at_the_roi(toy_runs: Any) -> None:
    out, findings = toy_runs["centre"]
    sev = _severities(findings)
    assert "hotspot_used" not in sev and "off_roi_above_chance" not in sev, findings
    m = out.metrics
    for method in ("hirescam", "layercam", "ig"):  # Grad-CAM: see the corner test
        assert _value(m[f"off_roi.{method}"]) < 0.01  # the analytic answer: none
        assert _value(m[f"pointing.{method}"]) > 0.9
    flips = m["offroi_hotspot.flip_excess"]
    assert not np.isfinite(_value(flips)) or abs(_value(flips)) < 0.05
    # deletion ordered by the map removes evidence faster than a random order
    assert _value(m["deletion_auc.ig"]) < _value(m["deletion_auc.random"])


def test_hotspot_enrichment_sees_the_planted_corner_and_nothing_on_the_clean_model(
    toy_runs: Any,
) -> None:
    """The corner model's HiResCAM map is, analytically, all inside the 4x4 read-out box
    (rows / cols 1-4; share 1, 36x its 2.8 % area), blurred only by the 24 -> 32 -> 24 px
    thumbnail resampling; the ROI-reading model puts nothing there (share exactly 0). The
    off-ROI excess of the same corner maps is capped at 0.25 (the outside area is 75 %)."""
    corner, _ = toy_runs["corner"]
    m = corner.metrics
    share, ratio = m["hotspot.share.hirescam"], m["hotspot.enrichment.hirescam"]
    assert isinstance(share, Estimate) and isinstance(ratio, Estimate)
    assert share.value > 0.8 and ratio.value > 25 and ratio.ci_low is not None
    assert ratio.value == pytest.approx(share.value / m["hotspot.box_area"], rel=0.05)
    assert _value(m["off_roi_excess.hirescam"]) < 0.26
    # the summary shows the enrichment second, not the off-ROI excess alone
    assert list(m)[:2] == [
        "offroi_hotspot.flip_excess",
        f"hotspot.enrichment.{m['offroi_hotspot.method']}",
    ]
    found = next(f for f in toy_runs["corner"][1] if f.rule == "offroi_hotspot")
    note = f"{found.message}; {found.evidence}"
    assert "box of 4x4 px at rows 1-4, cols 1-4 of the 24x24 px image" in note, note
    assert "top-left corner" in found.message
    assert "area share" in note
    assert found.figure == "overlays_most_off_roi" and "in-paint" in found.next_step
    centre, _ = toy_runs["centre"]
    for method in ("hirescam", "layercam", "ig"):
        assert _value(centre.metrics[f"hotspot.share.{method}"]) == 0.0
        assert _value(centre.metrics[f"hotspot.enrichment.{method}"]) == 0.0


def test_blank_maps_are_counted_and_left_out_of_the_hotspot_shares(toy_runs: Any) -> None:
    """The corner model's read-out weights are positive, so a map explaining class 0 (the
    negated logit) has no positive evidence: every class-0 HiResCAM map is blank (all zero
    after the ReLU), and exactly those maps are left out."""
    out, _ = toy_runs["corner"]
    table = out.tables["per_sample"]
    class0 = table["explained_class"].to_numpy() == 0
    assert 0 < class0.mean() < 1
    assert out.metrics["dead_maps.hirescam"] == pytest.approx(class0.mean())
    assert np.array_equal(table["hirescam.mass"].to_numpy() <= 0, class0)
    assert np.isnan(table.loc[class0, "hirescam.hotspot_share"]).all()
    assert out.metrics["hotspot.share.hirescam"].n == (~class0).sum()  # type: ignore[union-attr]
    note = next(n for n in out.notes if n.startswith(f"{class0.mean():.1%} of hirescam maps"))
    assert f"{class0.sum()} of {class0.sum()} explaining class 0" in note
    assert "0 of" in note and "leave them out" in note


def test_box_share_known_answers() -> None:
    from mmaudit.checks.saliency.hotspot import box_share

    box, size = (2, 12, 4, 14), (64, 64)  # 10x10 px
    uniform = np.ones((1, 32, 32))
    inside = np.zeros((1, 32, 32))
    inside[0, 1:6, 2:7] = 1.0  # the box on the 2x-pooled grid
    half = np.zeros((1, 32, 32))
    half[0, 0, 0] = 1.0  # a thumbnail pixel outside the box
    share, area = box_share(np.concatenate([uniform, inside, half, 0 * uniform]), box, size)
    assert area == pytest.approx(100 / 64**2)
    assert share[:3] == pytest.approx([area, 1.0, 0.0])
    assert np.isnan(share[3])  # a blank map has no share
    # a box edge through the middle of a thumbnail pixel counts half of it
    odd, _ = box_share(half, (0, 1, 0, 1), size)
    assert odd[0] == pytest.approx(0.25)


def test_without_masks_the_border_band_stands_in(toy_dir: Path) -> None:
    ctx = toy_context(toy_dir, kwargs={"focus": "corner"}, masks=False)
    # a band of 5 px (0.2 x 24) holds the whole 4x4 marker at rows / cols 1-4
    out, findings = run_check(ctx, methods=["gradcam", "ig"], sanity=False, border=0.2)
    m = out.metrics
    assert not any(k.startswith("off_roi") for k in m)
    assert _value(m["border.ig"]) > 0.99
    assert _value(m["border_excess.ig"]) > 0.3
    sev = _severities(findings)
    assert sev.get("border_above_chance") == "warn" and sev.get("hotspot_used") == "fail"
    assert any("no ROI masks" in n for n in out.notes)


def test_occlusion_maps_find_the_corner(toy_dir: Path) -> None:
    ctx = toy_context(toy_dir, kwargs={"focus": "corner"})
    # 5-px windows locate the 4-px marker only to a window, so the tested box is larger
    out, findings = run_check(
        ctx,
        methods=["occlusion"],
        subset_samples=24,
        sanity=False,
        occlusion_window=0.2,
        hotspot_size=0.25,
    )
    m = out.metrics
    assert m["offroi_hotspot.method"] == "occlusion"
    assert _value(m["hotspot.row.occlusion"]) < 0.25 and _value(m["hotspot.col.occlusion"]) < 0.25
    assert _severities(findings).get("hotspot_used") == "fail"


def test_donor_infill_and_a_softmax_model(toy_dir: Path) -> None:
    ctx = toy_context(
        toy_dir,
        kwargs={"focus": "corner", "two": True},
        target={"column": "label", "kind": "multiclass", "classes": ["0", "1"]},
    )
    out, findings = run_check(
        ctx, methods=["hirescam", "ig"], infill="donor", ig_baseline="mean", sanity=False
    )
    m = out.metrics
    assert _severities(findings).get("hotspot_used") == "fail"
    worst = m["offroi_hotspot.method"]
    assert _value(m[f"hotspot.row.{worst}"]) < 0.25 and _value(m[f"hotspot.col.{worst}"]) < 0.25
    assert _value(m[f"occlusion.delta_auroc_excess.{worst}"]) > 0


def test_sanity_check_flags_weight_independent_maps(toy_dir: Path) -> None:
    ctx = toy_context(toy_dir, factory="build_insensitive", layers={"image": "net"})
    out, findings = run_check(ctx, methods=["ig"], faithfulness_samples=0)
    assert _value(out.metrics["sanity.spearman.ig"]) > 0.9
    assert _severities(findings).get("sanity_failed") == "warn"
    untrusted = [f for f in findings if f.rule == "sanity_untrusted"]
    assert untrusted and "cannot be trusted" in untrusted[0].message
    # an untrusted method's location metrics carry no p-value, so they raise nothing
    assert out.metrics["off_roi_excess.ig"].null_p is None  # type: ignore[union-attr]
    assert out.metrics["sanity.trusted.ig"] == 0


def test_the_yaml_sanity_rule_decides_trust(toy_dir: Path) -> None:
    """One setting: raising the YAML limit of ``sanity_failed`` above the similarity's CI
    lower bound removes the warning and makes the method trusted again (its p-values
    kept); judging the point estimate instead of the CI bound moves the verdict too."""
    params = {"methods": ["ig"], "faithfulness_samples": 0}
    ctx = toy_context(toy_dir, factory="build_insensitive", layers={"image": "net"})
    out, _ = run_check(ctx, **params)
    sim = out.metrics["sanity.similarity.ig"]
    assert isinstance(sim, Estimate) and sim.ci_low is not None and sim.ci_low > 0.9
    between = (sim.ci_low + sim.value) / 2  # above the CI bound, below the point estimate
    for rule, trusted in (
        ({"warn_above": 1.0}, 1),
        ({"warn_above": between}, 1),
        ({"warn_above": between, "statistic": "value"}, 0),
    ):
        ctx = toy_context(
            toy_dir,
            factory="build_insensitive",
            layers={"image": "net"},
            checks={"saliency": {"thresholds": {"sanity_failed": rule}}},
        )
        out, findings = run_check(ctx, **params)
        assert out.metrics["sanity.trusted.ig"] == trusted, rule
        assert ("sanity_failed" in _severities(findings)) == (not trusted), rule
        assert any(f.rule == "sanity_untrusted" for f in findings) == (not trusted), rule
        has_p = out.metrics["off_roi_excess.ig"].null_p is not None  # type: ignore[union-attr]
        assert has_p == bool(trusted), rule


def test_sanity_verdict_comes_only_from_the_fully_randomised_model(
    toy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the last stage gives no comparison (e.g. no finite randomised map), an earlier,
    partly randomised stage must not stand in for the verdict: no sanity metric, no trust
    decision, a note instead. The first stage's row stays in the curve."""
    from mmaudit.checks.saliency import sanity

    real = sanity._similarities
    calls: list[int] = []

    def none_at_last_stage(a: np.ndarray, b: np.ndarray) -> Any:
        calls.append(1)
        return None if len(calls) == 2 else real(a, b)

    monkeypatch.setattr(sanity, "_similarities", none_at_last_stage)
    ctx = toy_context(toy_dir, kwargs={"focus": "corner"})
    out, findings = run_check(ctx, methods=["gradcam"], faithfulness_samples=0)
    assert out.metrics["sanity.stages"] == 2 and len(calls) == 2
    assert out.tables["sanity_curve"]["stage"].tolist() == [1]
    assert not any(k.startswith(("sanity.similarity.", "sanity.trusted.")) for k in out.metrics)
    assert any("sanity check of gradcam: no comparison" in n for n in out.notes)
    assert not any(f.rule in ("sanity_failed", "sanity_untrusted") for f in findings)


def test_holm_drops_the_p_values_of_an_untrusted_methods_secondary_peaks() -> None:
    """Secondary hotspot candidates are named ``<method>_2``, ``<method>_3``: they belong to
    ``<method>`` and lose their p-value with it; a trusted method's keep theirs."""
    from mmaudit.checks.saliency.metrics import holm_adjusted

    keys = [f"occlusion.flip_excess.{c}" for c in ("ig", "ig_2", "ig_3", "gradcam", "gradcam_2")]
    metrics: dict[str, Any] = {k: Estimate(0.3, n=20, null_p=0.001) for k in keys}
    metrics.update(holm_adjusted(metrics, keys, {"ig": False, "gradcam": True}))
    p = {k.rsplit(".", 1)[-1]: metrics[k].null_p for k in keys}
    assert p["ig"] is None and p["ig_2"] is None and p["ig_3"] is None
    assert p["gradcam"] is not None and p["gradcam_2"] is not None


def test_no_conv_layer_skips_cams_but_ig_runs(toy_dir: Path) -> None:
    ctx = toy_context(toy_dir, kwargs={"flat": True}, layers={})
    assert "gradcam" not in ctx.adapter.layers
    cls = load_builtin_checks()["saliency"]
    only_cams = cls(cls.Params(methods=["gradcam", "layercam"]))
    assert "no conv / token layer" in (only_cams.missing_requirements(ctx) or "")
    out, _ = run_check(ctx, methods=["gradcam", "ig"], sanity=False)
    assert any("CAM methods ['gradcam'] skipped" in n for n in out.notes)
    assert "off_roi.ig" in out.metrics and "off_roi.gradcam" not in out.metrics


def test_a_layer_that_gives_no_map_is_a_note(toy_dir: Path) -> None:
    ctx = toy_context(toy_dir, kwargs={"flat": True}, layers={"gradcam": "net.1"})
    out, _ = run_check(ctx, methods=["gradcam", "ig"], sanity=False, faithfulness_samples=0)
    assert any("layer 'net.1'" in n and "CAM methods" in n for n in out.notes)
    assert "off_roi.ig" in out.metrics


def test_dead_gradients_give_a_finding_not_a_crash(toy_dir: Path) -> None:
    ctx = toy_context(toy_dir, kwargs={"dead": True})
    out, findings = run_check(ctx, methods=["gradcam", "ig"])
    dead = [f for f in findings if f.rule == "dead_maps"]
    assert {f.metric for f in dead} == {"dead_maps.gradcam", "dead_maps.ig"}
    assert all(f.severity == "warn" for f in dead)
    assert any("no live saliency map" in n for n in out.notes)
    assert "hotspot_used" not in _severities(findings)


def test_single_class_image_rows_leave_auroc_undefined(toy_dir: Path) -> None:
    ctx = toy_context(toy_dir, kwargs={"focus": "corner"}, manifest="one_class.csv")
    out, _ = run_check(ctx, methods=["gradcam"], sanity=False, faithfulness_samples=0)
    assert out.metrics["n_images"] < N
    assert any("one class" in n for n in out.notes)
    assert not any(k.startswith("occlusion.delta_auroc") for k in out.metrics)
    assert any(k.startswith("occlusion.flip_excess") for k in out.metrics)


@pytest.fixture(scope="module")
def both_run(toy_dir: Path) -> tuple[CheckOutput, list[Finding]]:
    """The toy reading the ROI and (1.5x) the corner, on images in [0, 1]: site B's bright
    marker draws attribution out of the ROI, site A's dim corner does not; sex is
    unrelated. Class 1 explained everywhere, IG from a black baseline, default permutations.
    """
    ctx = toy_context(toy_dir, kwargs={"focus": "both"}, image={"mean": [0.0], "std": [1.0]})
    return run_check(ctx, target="positive", ig_baseline="black", n_permutations=2000)


def test_site_gap_survives_holm_and_the_unrelated_attribute_does_not(both_run: Any) -> None:
    out, _ = both_run
    m = out.metrics
    for method in ("hirescam", "ig"):
        site = m[f"subgroup_gap.site.off_roi.{method}"]
        sex = m[f"subgroup_gap.sex.off_roi.{method}"]
        assert isinstance(site, Estimate) and isinstance(sex, Estimate)
        assert site.value > 0.15 and site.null_p is not None and site.null_p < 0.05, site
        assert sex.null_p is not None and sex.null_p > 0.05, sex
    # IG from a black baseline went through the check and is complete
    assert _value(m["ig.delta_rel"]) < 0.05


def test_every_location_statistic_is_broken_down_by_every_attribute(both_run: Any) -> None:
    out, _ = both_run
    m = out.metrics
    for method in ("hirescam", "ig"):
        by = {
            (lev, stat): _value(m[f"by_attr.site.{lev}.{stat}.{method}"])
            for lev in "AB"
            for stat in ("off_roi", "pointing", "border")
        }
        assert by["A", "pointing"] > 0.9 and by["B", "pointing"] < 0.1  # B points at the marker
        assert by["B", "off_roi"] > by["A", "off_roi"] + 0.15
        assert by["B", "border"] > by["A", "border"]
        assert f"by_attr.sex.F.rank_acc.{method}" in m
    table = out.tables["subgroups"]
    assert set(table["statistic"]) == {"off_roi", "pointing", "rank_acc", "border", "hotspot_share"}
    assert set(table["attribute"]) == {"site", "sex"}
    # one histogram panel per method x attribute; the untrusted Grad-CAM is labelled
    assert m["sanity.trusted.gradcam"] == 0
    titles = [ax.get_title() for ax in out.figures["location_histograms"].axes if ax.has_data()]
    for attr in ("site", "sex"):
        assert sum(t.endswith(f"by {attr}") for t in titles) == 4
    assert "gradcam (untrusted): off_roi by site" in titles
    grid = out.figures["overlays_most_off_roi"]
    assert "gradcam (untrusted)" in [ax.get_ylabel() for ax in grid.axes]


def test_spray_finds_the_site_b_cluster(both_run: Any) -> None:
    out, findings = both_run
    assert out.metrics["clusters.n"] >= 2
    table = out.tables["clusters"]
    site_b = table[table["site_majority"] == "B"]
    assert len(site_b) and site_b["candidate_shortcut"].all()
    assert (site_b["site_purity"] >= 0.9).all()
    notes = [f.evidence for f in findings if f.rule == "cluster_candidate"]
    plain = [f.message for f in findings if f.rule == "cluster_candidate"]
    assert any("from site B cases" in n for n in plain), plain
    # the base rate is site B's share among the clustered maps (the IG subset), not all rows
    per_sample = out.tables["per_sample"]
    clustered = per_sample[per_sample["cluster"] >= 0]
    base = (clustered["site"] == "B").mean()
    assert len(clustered) < len(per_sample) and abs(base - 0.5) > 0.02
    assert any(f"site=B (100% vs {base:.0%} of the clustered maps)" in n for n in notes), notes


def test_hotspot_share_by_site_separates_the_marker_sites(both_run: Any) -> None:
    """Site B's bright marker draws attribution into the corner box, site A's dim corner
    much less: the per-level share and enrichment differ and the gap survives Holm; the
    unrelated sex does not. The judged box's note quotes the per-site shares."""
    out, findings = both_run
    m = out.metrics
    for method in ("hirescam", "ig"):
        a = m[f"by_attr.site.A.hotspot_enrichment.{method}"]
        b = m[f"by_attr.site.B.hotspot_enrichment.{method}"]
        assert isinstance(a, Estimate) and isinstance(b, Estimate)
        assert b.ci_low is not None and a.ci_high is not None and b.ci_low > a.ci_high
        share_b = _value(m[f"by_attr.site.B.hotspot_share.{method}"])
        assert b.value * _value(m["hotspot.box_area"]) == pytest.approx(share_b, rel=0.1)
        gap = m[f"subgroup_gap.site.hotspot_share.{method}"]
        sex = m[f"subgroup_gap.sex.hotspot_share.{method}"]
        assert isinstance(gap, Estimate) and gap.null_p is not None and gap.null_p < 0.05
        assert isinstance(sex, Estimate) and sex.null_p is not None and sex.null_p > 0.05
    note = next(f.evidence for f in findings if f.rule == "offroi_hotspot")
    assert "; site B " in note and " / A " in note and "sex" not in note, note


def test_judged_hotspot_box_is_not_chosen_by_noise() -> None:
    """No excess flagged: one control flip more or less (0 vs -1/96) must not pick the box
    the report names; the most enriched box is judged. A flagged box wins over any
    unflagged one, however enriched, and the larger flagged excess wins among flagged."""
    from mmaudit.checks.saliency.check import SaliencyCheck
    from mmaudit.checks.saliency.hotspot_verdict import judged_box

    rule = SaliencyCheck.default_thresholds["hotspot_used"]

    def fake(excess: dict[str, Estimate], enrichment: dict[str, float]) -> dict[str, Any]:
        metrics: dict[str, Any] = {f"occlusion.flip_excess.{m}": e for m, e in excess.items()}
        metrics.update({f"hotspot.enrichment.{m}": Estimate(v) for m, v in enrichment.items()})
        return metrics

    noise = {
        "ig": Estimate(-1 / 96, -0.03, 0.0, n=96, null_p=1.0),
        "layercam": Estimate(-1 / 96, -0.03, 0.0, n=96, null_p=1.0),
        "ig_2": Estimate(0.0, 0.0, 0.0, n=96, null_p=1.0),
    }
    enriched = {"ig": 5.2, "layercam": 6.1, "ig_2": 1.4}
    names = list(noise)
    assert judged_box(fake(noise, enriched), names, rule) == "layercam"
    used = {
        **noise,
        "ig_2": Estimate(0.12, 0.06, 0.2, n=96, null_p=0.001),
        "ig": Estimate(0.08, 0.03, 0.12, n=96, null_p=0.01),
    }
    assert judged_box(fake(used, enriched), names, rule) == "ig_2"
    # a larger excess that the rule lets pass (p above max_p) is not the worst case
    loud = {**used, "layercam": Estimate(0.3, -0.1, 0.6, n=96, null_p=0.4)}
    assert judged_box(fake(loud, enriched), names, rule) == "ig_2"


def test_level_gap_null_is_calibrated_when_missingness_follows_the_level() -> None:
    """Noise statistics, 60 rows of each level, only 4 level-B rows finite (dead maps or
    missing ROI masks concentrated at one site). The null must shuffle the levels among
    the finite rows: a null over all known rows has balanced counts, too narrow for the
    observed 56-vs-4 gap, and rejects about half the time. A planted gap is still found,
    and a column with another NaN pattern is tested on its own rows."""
    from mmaudit.checks.saliency.subgroups import level_gap_tests

    n = 120
    codes = np.repeat([0, 1], n // 2)
    groups = np.arange(n)
    level_b = np.flatnonzero(codes == 1)
    rejected, found = 0, 0
    seeds = 100
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        values = rng.normal(size=(n, 2))
        values[level_b[4:], 0] = np.nan
        values[::3, 1] = np.nan
        planted = values.copy()
        planted[level_b, 1] += 1.5
        null_res = level_gap_tests(codes, groups, values, 2, rng, 200)
        assert null_res[0][2] == n // 2 + 4 and null_res[1][2] == n - n // 3
        rejected += null_res[0][1] < 0.05
        found += level_gap_tests(codes, groups, planted, 2, rng, 200)[1][1] < 0.05
    assert rejected / seeds <= 0.10
    assert found / seeds >= 0.9
    few = np.full((n, 1), np.nan)
    few[:3, 0] = 1.0
    assert level_gap_tests(codes, groups, few, 2, np.random.default_rng(0), 50) == [(None, None, 0)]


def test_spray_eigengap_allows_one_cluster() -> None:
    from mmaudit.checks.saliency.clusters import spectral

    rng = np.random.default_rng(0)
    homogeneous = rng.normal(size=(200, 64))
    labels, k, _ = spectral(homogeneous, 8, seed=0)
    assert k == 1 and set(labels) == {0}
    centres = rng.normal(size=(3, 64)) * 4
    planted = np.concatenate([c + rng.normal(size=(60, 64)) for c in centres])
    labels, k, _ = spectral(planted, 8, seed=0)
    assert k == 3
    truth = np.repeat(np.arange(3), 60)
    assert all(len(set(labels[truth == c])) == 1 for c in range(3))


def test_a_tiny_vit_end_to_end_layer_by_layer(toy_dir: Path) -> None:
    """Token maps reshaped to the grid; ``sanity_stages: all`` randomises one parametrised
    layer per stage, and IG is recomputed at every one."""
    layers = build_vit().default_layers()
    ctx = toy_context(toy_dir, factory="build_vit", layers=layers)
    out, _ = run_check(
        ctx,
        sanity_stages="all",
        sanity_samples=4,
        subset_samples=8,
        faithfulness_samples=4,
        ig_steps=4,
        control_draws=2,
        n_permutations=100,
    )
    m = out.metrics
    assert str(m["cam_layer"]).endswith("blocks.1.norm1")
    # 4x4 tokens of 6 px: cells coarser than the 4-px hotspot box, which a note says
    assert m["cam_grid.gradcam"] == "4x4"
    assert any(n.startswith("gradcam, hirescam") and "4x4 grid" in n for n in out.notes)
    for method in ("gradcam", "hirescam", "layercam", "ig"):
        assert np.isfinite(_value(m[f"off_roi.{method}"]))
    curve = out.tables["sanity_curve"]
    assert m["sanity.stages"] == m["sanity.layers"] > 10
    assert (curve["method"] == "ig").sum() == m["sanity.layers"]
    assert "randomisation_curve" in out.figures


def test_no_positive_decision_is_a_note_not_a_silent_gap(toy_dir: Path) -> None:
    # the read-out offset puts every logit below 0; class 1 is still explained (live maps)
    ctx = toy_context(toy_dir, kwargs={"focus": "centre", "offset": 5.0})
    out, _ = run_check(
        ctx, methods=["hirescam"], target="positive", sanity=False, faithfulness_samples=0
    )
    assert "overlays_confident_positives" not in out.figures
    assert "overlays_most_off_roi" in out.figures
    assert any("no image row is decided positive" in n for n in out.notes)


def test_the_report_folder_holds_every_figure_and_the_per_sample_table(
    toy_dir: Path, tmp_path: Path
) -> None:
    import yaml

    from mmaudit.runner import Overrides, run_audit

    raw = toy_config(toy_dir)
    raw["checks"] = {"saliency": {"params": {**FAST, "faithfulness_samples": 0}}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_audit(path, tmp_path / "report", Overrides(checks=["saliency"]))
    figures = tmp_path / "report" / "figures" / "saliency"
    assert {f.stem for f in figures.glob("*.png")} >= set(FIGURES)
    table = pd.read_csv(tmp_path / "report" / "tables" / "saliency" / "per_sample.csv")
    assert len(table) == N and "ig.off_roi" in table


def test_params_are_validated() -> None:
    from mmaudit.checks.contract import build_params
    from mmaudit.engine.errors import CheckError

    cls = load_builtin_checks()["saliency"]
    with pytest.raises(CheckError, match="unknown key 'ig_step'") as info:
        build_params(cls, {"ig_step": 4}, "checks.saliency")
    assert "did you mean 'ig_steps'" in info.value.one_line()
    with pytest.raises(CheckError, match="methods"):
        build_params(cls, {"methods": ["smoothgrad"]}, "checks.saliency")


# ----------------------------------------------------------------------------- the sample

SAMPLE_FAST = {
    "methods": ["ig"],
    "sanity": False,
    "faithfulness_samples": 0,
    "hotspot_max": 3,
    "hotspot_null": 50,
}


def sample_context(checkpoint: str) -> AuditContext:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.model.checkpoint = ROOT / "sample_data" / "checkpoints" / checkpoint
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=64, seed=0)
    cache.request_layers([k for k in ("embedding", *ds.modalities) if k in adapter.layers])
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


@pytest.fixture(scope="module")
def sample_runs() -> dict[str, tuple[CheckOutput, list[Finding]]]:
    cls = load_builtin_checks()["saliency"]
    runs = {}
    for name in ("shortcut", "clean"):
        ctx = sample_context(name)
        check = cls(cls.Params.model_validate(SAMPLE_FAST))
        out = check.run(ctx)
        assert ctx.adapter.hook_count() == 0
        runs[name] = (
            out,
            list(out.findings) + judge("saliency", out.metrics, cls.default_thresholds),
        )
    return runs


def test_sample_shortcut_fails_on_the_marker(sample_runs: Any) -> None:
    out, findings = sample_runs["shortcut"]
    assert _severities(findings).get("hotspot_used") == "fail"
    m = out.metrics
    worst = m["offroi_hotspot.method"]
    # the box tested is the top-left marker (rows 2-7, cols 2-7 of 64)
    assert _value(m[f"hotspot.row.{worst}"]) < 0.2 and _value(m[f"hotspot.col.{worst}"]) < 0.2
    assert _value(m[f"occlusion.delta_auroc_excess.{worst}"]) > 0
    assert _value(m["ig.delta_rel"]) < 0.05  # IG completeness on the real model
    # site B's marker pulls attribution off the lungs: a gap that survives Holm
    gap = m["subgroup_gap.site.off_roi.ig"]
    assert isinstance(gap, Estimate) and gap.null_p is not None and gap.null_p < 0.05
    # ... which the off-ROI excess cannot show (the outside area is 81 %), but the share of
    # the attribution in the marker's hotspot box can: many times its area share on site B
    assert _value(m["off_roi_excess.ig"]) < 0.05
    site_b = m["by_attr.site.B.hotspot_enrichment.ig"]
    assert isinstance(site_b, Estimate) and site_b.ci_low is not None and site_b.ci_low > 5
    assert _value(m["by_attr.site.A.hotspot_enrichment.ig"]) < 1
    assert list(m)[1] == "hotspot.enrichment.ig"


def test_sample_clean_model_does_not_fail(sample_runs: Any) -> None:
    out, findings = sample_runs["clean"]
    assert "hotspot_used" not in _severities(findings), findings
    # IG's top off-ROI box holds no more than about its area share on either site
    m = out.metrics
    for site in "AB":
        assert _value(m[f"by_attr.site.{site}.hotspot_enrichment.ig"]) < 2
    gap = m["subgroup_gap.site.hotspot_share.ig"]
    assert isinstance(gap, Estimate) and (gap.null_p is None or gap.null_p > 0.05)


def test_sample_sex_trace_raises_no_saliency_finding(sample_runs: Any) -> None:
    for name, (out, findings) in sample_runs.items():
        assert not any("sex" in (f.metric or "") or "sex" in f.message for f in findings), name
        for key, metric in out.metrics.items():
            # the border band is left out: the wider M silhouette reaches it, so IG's border
            # share is truly higher for M (image content, not a shortcut; no rule judges it)
            if key.startswith("subgroup_gap.sex.") and ".border." not in key:
                assert isinstance(metric, Estimate)
                assert metric.null_p is None or metric.null_p > 0.05, (name, key, metric)


def test_grouped_bootstrap_matches_the_stats_module() -> None:
    from mmaudit.methods.stats import CountBootstrap, auroc, bootstrap_ci

    rng = np.random.default_rng(0)
    n = 300
    groups = np.repeat(np.arange(150), 2).astype(str)
    v = rng.normal(0.3, 1.0, n) + np.repeat(rng.normal(0, 1, 150), 2)  # patient effect
    rows = np.arange(n)
    bs = CountBootstrap(groups, n, 2000, 0.05, seed=0)
    ours = bs.mean(v, rows)
    ref = bootstrap_ci(np.mean, v, groups=groups, n_boot=2000, seed=0)
    assert ours.value == pytest.approx(ref.value)
    assert ours.ci_low == pytest.approx(ref.ci_low, abs=0.03)
    assert ours.ci_high == pytest.approx(ref.ci_high, abs=0.03)
    # rows resampled alone would give a narrower, wrong interval for clustered data
    by_row = CountBootstrap(None, n, 2000, 0.05, seed=0).mean(v, rows)
    assert by_row.ci_high - by_row.ci_low < ours.ci_high - ours.ci_low
    y = (v + rng.normal(0, 1, n) > 0.3).astype(int)
    a, b = rng.normal(size=n), v
    d = bs.auroc_diff(y, a, b, rows)
    assert d.value == pytest.approx(auroc(y, b) - auroc(y, a))
    assert d.ci_low < d.value < d.ci_high and d.null_p is not None and d.null_p < 0.01
    # block-by-block regeneration (large cohorts) gives the very same resamples
    small = CountBootstrap(groups, n, 2000, 0.05, seed=0)
    small._kept = None
    small.block = 7
    kept_blocks = CountBootstrap(groups, n, 2000, 0.05, seed=0)
    kept_blocks.block = 7
    kept_blocks._kept = list(kept_blocks._draw())
    assert small.mean(v, rows) == kept_blocks.mean(v, rows)


def test_half_the_roi_masks_empty_is_a_coverage_note_with_counts(
    toy_dir: Path, tmp_path: Path
) -> None:
    """Every other row's ROI mask is empty: off-ROI statistics can use only the other half,
    and the check says so with the counts instead of quietly averaging over 48 of 96."""
    frame = pd.read_csv(toy_dir / "manifest.csv")
    frame["image_path"] = [str(toy_dir / p) for p in frame["image_path"]]
    frame["mask_path"] = [str(toy_dir / p) for p in frame["mask_path"]]
    Image.fromarray(np.zeros((S, S), np.uint8)).save(tmp_path / "empty.png")
    frame.loc[frame.index % 2 == 0, "mask_path"] = str(tmp_path / "empty.png")
    frame.to_csv(tmp_path / "half_masks.csv", index=False)
    ctx = toy_context(toy_dir, manifest=str(tmp_path / "half_masks.csv"))
    out, _ = run_check(ctx, methods=["gradcam"], sanity=False, faithfulness_samples=0)
    half = N // 2
    assert out.coverage == [
        f"{half} of {N} image rows have a usable (non-empty) ROI mask (the others:"
        f" {half} empty); off-ROI statistics, pointing and rank accuracy use those {half}"
    ]
    assert out.metrics["off_roi_chance"].n == half
    assert out.judged > 0 and out.rows_used == N
    full, _ = run_check(
        toy_context(toy_dir), methods=["gradcam"], sanity=False, faithfulness_samples=0
    )
    assert full.coverage == [] and full.metrics["off_roi_chance"].n == N
    # IG alone maps a seeded subset: the counts are of that subset, not of every image row
    ig, _ = run_check(ctx, methods=["ig"], sanity=False, faithfulness_samples=0)
    (line,) = ig.coverage
    usable, of, empty = (int(x) for x in re.findall(r"\d+", line)[:3])
    assert of == FAST["subset_samples"] and usable + empty == of and 0 < usable < of, line
