"""Saliency's off-ROI grid scan (issue 18): a model that reads a corner marker through a
thresholded, gradient-free path has maps blind to it, so the map-proposed hotspot test
cannot find it; the scan, which fills every off-ROI box and needs no map, must. The same
films read by a model that ignores the marker, or encodes it without it ever deciding,
pass the scan. The statistics underneath (sign test, its power, the stratified subset, the
grid) are checked against exact answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom
from test_saliency_corners import write_marked_films
from torch import nn

from mmaudit.checks.contract import AuditContext, CheckOutput, Finding
from mmaudit.checks.findings import judge
from mmaudit.checks.registry import load_builtin_checks
from mmaudit.methods.region_scan import (
    boxes_overlap,
    grid_boxes,
    min_detectable_flip,
    sign_test_p,
    sign_test_power,
    stratified_subset,
)
from mmaudit.methods.stats import Estimate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).resolve().parent
S = 64
N = 64
MARK = (2, 7, 2, 7)  # the 5x5 marker: rows 2-6, cols 2-6 (top-left corner)
LUNG = (14, 50, 14, 50)


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((S, S), bool)
    m[r0:r1, c0:c1] = True
    return m


class BlindMarkerReader(nn.Module):
    """logit = a * (mean of the lung centre - 0.51) + b * (1[marker mean > 0.6] - 0.5).

    The marker term is a step of a detached statistic: its gradient is zero everywhere, so
    gradient maps (IG here) never point at the marker, yet it switches the output.
    ``used`` (a=4, b=6): the marker decides every site-B film; ``clean`` (b=0): lungs only;
    ``encoded`` (a=8, b=0.4): the marker shifts the logit by 0.4, never across 0."""

    def __init__(self, mode: str = "used") -> None:
        super().__init__()
        a, b = {"used": (4.0, 6.0), "clean": (8.0, 0.0), "encoded": (8.0, 0.4)}[mode]
        lung = torch.zeros(S, S)
        lung[20:44, 20:44] = 1.0
        self.lung = nn.Parameter(a * lung / lung.sum())
        self.b = b
        self.bias = nn.Parameter(torch.tensor(-a * 0.51))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image[:, 0]
        r0, r1, c0, c1 = MARK
        on = (x[:, r0:r1, c0:c1].mean(dim=(1, 2)).detach() > 0.6).float()
        z = (x * self.lung).sum(dim=(1, 2)) + self.bias + self.b * (on - 0.5)
        return z[:, None]


def build_blind_reader(mode: str = "used") -> nn.Module:
    """The factory the configs name as ``test_saliency_scan:build_blind_reader``."""
    return BlindMarkerReader(mode).eval()


def write_films(folder: Path) -> Path:
    """64 films: noisy background, lungs whose brightness carries the label, a bright 5x5
    marker in the top-left corner of every site-B film (site B mostly positive)."""
    return write_marked_films(folder, _box(*LUNG), _box(*MARK))


def context(manifest: Path, mode: str, masks: bool = True, budget_mb: float = 1024) -> AuditContext:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    image: dict[str, Any] = {
        "column": "image_path",
        "size": S,
        "channels": 1,
        "mean": [0.0],
        "std": [1.0],  # the model reads pixel values in [0, 1]
    }
    if masks:
        image["roi_mask"] = "mask_path"
    cfg = AuditConfig.model_validate(
        {
            "model": {
                "factory": "test_saliency_scan:build_blind_reader",
                "kwargs": {"mode": mode},
                "python_path": [str(TESTS)],
                "layers": {},
            },
            "data": {
                "manifest": str(manifest),
                "id": "id",
                "patient": "patient",
                "target": {"column": "label"},
                "image": image,
                "attributes": {"site": {}},
            },
            "runtime": {
                "device": "cpu",
                "batch_size": 32,
                "progress": False,
                "memory_budget_mb": budget_mb,
            },
        }
    )
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


PARAMS = {
    "methods": ["ig"],
    "subset_samples": 0,
    "ig_steps": 8,
    "sanity": False,
    "faithfulness_samples": 0,
    "hotspot_null": 50,
    "n_permutations": 50,
    "n_boot": 200,
    "scan_max_boxes": 60,
}


def run(
    manifest: Path, mode: str, masks: bool = True, budget_mb: float = 1024, **params: Any
) -> tuple[CheckOutput, list[Finding]]:
    cls = load_builtin_checks()["saliency"]
    check = cls(cls.Params.model_validate({**PARAMS, **params}))
    ctx = context(manifest, mode, masks, budget_mb)
    assert check.missing_requirements(ctx) is None
    out = check.run(ctx)
    import matplotlib.pyplot as plt

    for fig in out.figures.values():
        plt.close(fig)
    return out, list(out.findings) + judge("saliency", out.metrics, cls.default_thresholds)


def _value(metric: Any) -> float:
    return float(metric.value) if isinstance(metric, Estimate) else float(metric)


def _verdict(findings: list[Finding], rule: str) -> str | None:
    return next((f.severity for f in findings if f.rule == rule), None)


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_films(tmp_path_factory.mktemp("blind_marker"))


@pytest.fixture(scope="module")
def runs(films: Path) -> dict[str, tuple[CheckOutput, list[Finding]]]:
    return {mode: run(films, mode) for mode in ("used", "clean", "encoded")}


def test_the_scan_finds_a_marker_the_maps_are_blind_to(runs: Any) -> None:
    out, findings = runs["used"]
    m = out.metrics
    # the maps are blind: the hotspot test (map-proposed boxes) does not fail
    assert _verdict(findings, "hotspot_used") != "fail"
    assert not _value(m["offroi_hotspot.flip_excess"]) > 0.05
    # the scan fails, on a box that holds the whole marker
    assert _verdict(findings, "scan_used") == "fail"
    est = m["scan.max_flip_excess"]
    assert est.value > 0.3 and est.null_p is not None and est.null_p < 1e-4
    rows, cols = m["scan.box_rows"], m["scan.box_cols"]
    r0 = round(m["scan.row"] * S - rows / 2)
    c0 = round(m["scan.col"] * S - cols / 2)
    assert r0 <= MARK[0] and MARK[1] <= r0 + rows and c0 <= MARK[2] and MARK[3] <= c0 + cols
    assert m["scan.maps_pointed"] == 0
    unmapped = next(f for f in out.findings if f.rule == "scan_unmapped")
    assert unmapped.severity == "warn" and unmapped.figure == "scan_effect_map"
    assert f"rows {r0}-{r0 + rows - 1}" in unmapped.message
    # every site-B film flips (half the rows), no site-A film does
    assert abs(_value(m["scan.flip_rate"]) - 0.5) < 0.05
    grid = out.tables["scan_grid"]
    assert len(grid) == m["scan.boxes_tested"] and grid["significant"].sum() >= 1
    assert m["scan.forward_passes"] == m["scan.rows"] * (1 + len(grid) + grid["size"].nunique() * 4)
    assert any(
        n.startswith("scan: ") and "a pass means no flip excess larger than" in n for n in out.notes
    )


def test_the_clean_and_the_encoded_only_models_pass_the_scan(runs: Any) -> None:
    for mode in ("clean", "encoded"):
        out, findings = runs[mode]
        assert _verdict(findings, "scan_used") in (None, "pass"), mode
        assert not _value(out.metrics["scan.max_flip_excess"]) > 0.05, mode
        assert out.metrics["scan.boxes_significant"] == 0, mode
        assert not any(f.rule == "scan_unmapped" for f in out.findings), mode


def test_without_masks_the_scan_covers_the_border_band(films: Path) -> None:
    out, findings = run(films, "used", masks=False)
    assert _verdict(findings, "scan_used") == "fail"
    grid = out.tables["scan_grid"]
    centre_r = (grid["r0"] + grid["r1"] + 1) / 2
    centre_c = (grid["c0"] + grid["c1"] + 1) / 2
    band = round(0.1 * S)
    edge = np.minimum.reduce([centre_r, centre_c, S - centre_r, S - centre_c])
    assert (edge <= band + 0.5).all()  # every box centre lies in the border band


def test_a_small_memory_budget_splits_the_fills_and_changes_nothing(films: Path, runs: Any) -> None:
    """At 0.5 MB half the budget holds 8 filled 64x64 copies, fewer than one job's batch of
    32: the fills go one job at a time and the forwards in budgeted chunks, with the same
    result as the default budget."""
    small, _ = run(films, "used", budget_mb=0.5)
    big, _ = runs["used"]
    a, b = small.tables["scan_grid"], big.tables["scan_grid"]
    pd.testing.assert_frame_equal(
        a.drop(columns="delta_logit_excess"), b.drop(columns="delta_logit_excess")
    )
    assert np.allclose(a["delta_logit_excess"], b["delta_logit_excess"], atol=1e-5)
    memory = next(n for n in small.notes if n.startswith("memory:"))
    assert "saliency scan fills" in memory and "-> 8 rows" in memory


def test_the_scan_can_be_turned_off(films: Path) -> None:
    out, findings = run(films, "used", scan=False)
    assert np.isnan(out.metrics["scan.max_flip_excess"].value)
    assert _verdict(findings, "scan_used") in (None, "pass")
    assert "scan_effect_map" not in out.figures


# ------------------------------------------------------------------ the statistics


def test_sign_test_is_exact() -> None:
    assert sign_test_p(np.array([1.0] * 5)) == pytest.approx(1 / 32)
    assert sign_test_p(np.array([1.0, 1.0, -1.0, 0.0, np.nan])) == pytest.approx(0.5)
    assert sign_test_p(np.zeros(10)) == 1.0


def test_min_detectable_flip_reaches_the_asked_power() -> None:
    alpha = 0.05 / 100
    # no control flips: k discordant pairs all favour the box; the test needs
    # k >= ceil(log2(1 / alpha)) = 11, so power(delta) = P(Bin(n, delta) >= 11)
    n = 200
    mde = min_detectable_flip(n, 0.0, alpha)
    assert binom.sf(10, n, mde) == pytest.approx(0.8, abs=1e-6)
    assert sign_test_power(n, mde, 0.0, alpha) == pytest.approx(0.8, abs=1e-6)
    # more control noise or fewer patients: a larger detectable effect
    assert min_detectable_flip(n, 0.05, alpha) > mde
    assert min_detectable_flip(100, 0.0, alpha) > mde
    assert np.isnan(min_detectable_flip(5, 0.0, alpha))  # 5 patients cannot reach 5e-4


def test_stratified_subset_keeps_the_mix() -> None:
    strata = np.array(["a"] * 600 + ["b"] * 300 + ["c"] * 100)
    pick = stratified_subset(strata, 200, np.random.default_rng(0))
    assert len(pick) == 200 and len(set(pick)) == 200
    assert [int((strata[pick] == k).sum()) for k in "abc"] == [120, 60, 20]
    rare = np.array(["a"] * 999 + ["b"])
    assert "b" in rare[stratified_subset(rare, 10, np.random.default_rng(0))]
    assert len(stratified_subset(strata, 0, np.random.default_rng(0))) == 1000


def test_grid_boxes_reach_the_edges_and_avoid_the_forbidden_area() -> None:
    forbidden = torch.from_numpy(_box(10, 54, 10, 54))
    boxes = grid_boxes((S, S), (10, 10), 0.5, forbidden)
    assert (0, 10, 0, 10) in boxes and (54, 64, 54, 64) in boxes  # both far corners
    assert all(not forbidden[r0:r1, c0:c1].any() for r0, r1, c0, c1 in boxes)
    assert boxes_overlap((0, 10, 0, 10), (5, 15, 5, 15))  # a quarter of the smaller
    assert not boxes_overlap((0, 10, 0, 10), (6, 16, 6, 16))


def test_the_hotspot_test_states_what_a_pass_rules_out() -> None:
    from types import SimpleNamespace

    from mmaudit.checks.saliency.params import SaliencyParams
    from mmaudit.checks.saliency.power import hotspot_power

    n = 200
    s = SimpleNamespace(
        ctx=SimpleNamespace(groups=np.repeat(np.arange(n), 2)),  # 2 images per patient
        rows=np.arange(2 * n),
        params=SaliencyParams(),
    )
    metrics = {
        "hotspot.candidates": 2,
        "occlusion.flip_rate_control.ig": Estimate(0.0, n=2 * n),
        "occlusion.flip_rate_control.ig_2": Estimate(0.0, n=2 * n),
    }
    out = hotspot_power(s, metrics, s.rows)  # type: ignore[arg-type]
    mde = out.metrics["offroi_hotspot.mde_flip"]
    # 200 patients, alpha 0.05 / 2: six discordant patients all one way are needed
    assert binom.sf(5, n, mde) == pytest.approx(0.8, abs=1e-6)
    assert f"no hotspot flip excess larger than {mde:.2f}" in out.notes[0]
    assert hotspot_power(s, {"hotspot.candidates": 0}, s.rows).metrics == {}  # type: ignore[arg-type]
    # the power is that of the rows the test filled: half the patients, a larger effect
    capped = hotspot_power(s, metrics, s.rows[:n])  # type: ignore[arg-type]
    assert capped.metrics["offroi_hotspot.mde_flip"] > mde
