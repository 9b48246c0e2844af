"""Saliency's blind corners (issue 20): on a small film whose lungs reach close to the margin,
the default hotspot box plus the ROI margin has no legal position near a corner, so a marker
there went untested. A used marker in each of the four corners must now fail
``hotspot_used`` (a smaller box that fits is tested, and the report says which size); the
same films read by a model that ignores the marker, or that encodes it without using it,
stay quiet."""

from __future__ import annotations

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

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).resolve().parent
S = 64  # film side: the default box is round(0.15 * 64) = 10 px, the ROI margin 3 px
N = 64
M = 5  # marker side
CORNERS = {"top_left": (1, 1), "top_right": (1, S - 1 - M), "bottom_left": (S - 1 - M, 1)}
CORNERS["bottom_right"] = (S - 1 - M, S - 1 - M)
CUT = 8  # leg of the triangle cut off each corner of the lung field


def lung_mask() -> np.ndarray:
    """Lungs filling rows / cols 6-57 of the 64-px film, each corner cut by a triangle of
    leg ``CUT``: with the 3-px margin no 10-px box fits in a corner, a 7-px box does."""
    rr, cc = np.mgrid[0:S, 0:S]
    m = np.zeros((S, S), bool)
    m[6:58, 6:58] = True
    for r0, c0, sr, sc in ((6, 6, 1, 1), (6, 57, 1, -1), (57, 6, -1, 1), (57, 57, -1, -1)):
        dr, dc = sr * (rr - r0), sc * (cc - c0)
        m &= ~((dr + dc < CUT) & (dr >= 0) & (dc >= 0))
    m[40:, 22:42] = False
    return m


def marker_mask(corner: str) -> np.ndarray:
    r, c = CORNERS[corner]
    m = np.zeros((S, S), bool)
    m[r : r + M, c : c + M] = True
    return m


class CornerReader(nn.Module):
    """logit = a * (mean of the lung centre - 0.51) + b * (mean of the marker pixels - 0.57).

    ``used`` (a=4, b=6): the marker decides (site B's bright marker: positive whatever the
    lungs say); ``clean`` (a=8, b=0): only the lungs; ``encoded`` (a=8, b=0.4): the marker
    moves the logit by about 0.15 against the lungs' 1: it shows in the maps but never
    decides."""

    def __init__(self, corner: str = "top_left", mode: str = "used") -> None:
        super().__init__()
        a, b = {"used": (4.0, 6.0), "clean": (8.0, 0.0), "encoded": (8.0, 0.4)}[mode]
        lung = torch.zeros(S, S)
        lung[16:48, 16:48] = 1.0
        marker = torch.from_numpy(marker_mask(corner)).float()
        self.lung = nn.Parameter(a * lung / lung.sum())
        self.marker = nn.Parameter(b * marker / marker.sum())
        self.bias = nn.Parameter(torch.tensor(-a * 0.51 - b * 0.57))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image[:, 0]
        z = (x * self.lung).sum(dim=(1, 2)) + (x * self.marker).sum(dim=(1, 2)) + self.bias
        return z[:, None]


def build_corner_reader(corner: str = "top_left", mode: str = "used") -> nn.Module:
    """The factory the configs name as ``test_saliency_corners:build_corner_reader``."""
    return CornerReader(corner, mode).eval()


def write_films(folder: Path, corner: str) -> Path:
    """64 films: noisy background, lungs whose brightness carries the label, a bright 5x5
    marker in ``corner`` on every site-B film (site B mostly positive)."""
    return write_marked_films(folder, lung_mask(), marker_mask(corner))


def write_marked_films(folder: Path, lungs: np.ndarray, marker: np.ndarray) -> Path:
    """N films of S px with the ROI ``lungs`` (its brightness carries the label, also its
    mask) and the pixels ``marker`` burnt bright on every site-B film (site B mostly
    positive); the manifest."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    site = np.array(["A", "B"] * (N // 2))
    label = np.where(site == "B", rng.random(N) < 0.7, rng.random(N) < 0.3).astype(int)
    rows = []
    for i in range(N):
        img = rng.normal(50, 6, (S, S))
        img[lungs] = rng.normal(100 + 60 * label[i], 8, int(lungs.sum()))
        if site[i] == "B":
            img[marker] = 240
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"f{i}.png")
        Image.fromarray(lungs.astype(np.uint8) * 255).save(folder / "masks" / f"f{i}.png")
        rows.append(
            {
                "id": f"f{i}",
                "patient": f"p{i}",
                "image_path": f"images/f{i}.png",
                "mask_path": f"masks/f{i}.png",
                "label": int(label[i]),
                "site": site[i],
            }
        )
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def context(manifest: Path, corner: str, mode: str) -> AuditContext:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = AuditConfig.model_validate(
        {
            "model": {
                "factory": "test_saliency_corners:build_corner_reader",
                "kwargs": {"corner": corner, "mode": mode},
                "python_path": [str(TESTS)],
                "layers": {},
            },
            "data": {
                "manifest": str(manifest),
                "id": "id",
                "patient": "patient",
                "target": {"column": "label"},
                "image": {
                    "column": "image_path",
                    "size": S,
                    "channels": 1,
                    "mean": [0.0],
                    "std": [1.0],  # the model reads pixel values in [0, 1]
                    "roi_mask": "mask_path",
                },
                "attributes": {"site": {}},
            },
            "runtime": {"device": "cpu", "batch_size": 32, "progress": False},
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
}


def run(manifest: Path, corner: str, mode: str) -> tuple[CheckOutput, list[Finding]]:
    cls = load_builtin_checks()["saliency"]
    check = cls(cls.Params.model_validate(PARAMS))
    ctx = context(manifest, corner, mode)
    assert check.missing_requirements(ctx) is None
    out = check.run(ctx)
    import matplotlib.pyplot as plt

    for fig in out.figures.values():
        plt.close(fig)
    return out, list(out.findings) + judge("saliency", out.metrics, cls.default_thresholds)


def _value(metric: Any) -> float:
    return float(metric.value) if isinstance(metric, Estimate) else float(metric)


def _verdict(findings: list[Finding]) -> str | None:
    return next((f.severity for f in findings if f.rule == "hotspot_used"), None)


@pytest.fixture(scope="module", params=list(CORNERS))
def corner_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, tuple[CheckOutput, list[Finding]]]]:
    corner = request.param
    manifest = write_films(tmp_path_factory.mktemp(f"corner_{corner}"), corner)
    return corner, {mode: run(manifest, corner, mode) for mode in ("used", "clean", "encoded")}


def test_the_default_box_has_no_room_in_the_corners() -> None:
    """The premise: with the 3-px margin around these lungs a 10-px box cannot touch the
    marker in any corner, a 7-px one can (the check's ROI frequency map is a little wider:
    it tests a 6-px box)."""
    from mmaudit.methods.region_fill import free_positions

    roi = torch.from_numpy(lung_mask()).float()[None]
    wide = torch.nn.functional.max_pool2d(roi[None], 7, stride=1, padding=3)[0]
    for corner in CORNERS:
        r, c = CORNERS[corner]
        ten = free_positions(wide, (S, S), 10, 10)[0]
        seven = free_positions(wide, (S, S), 7, 7)[0]
        holds = [
            (r0, c0)
            for r0 in range(S - 6)
            for c0 in range(S - 6)
            if seven[r0, c0] and r0 <= r and r + M <= r0 + 7 and c0 <= c and c + M <= c0 + 7
        ]
        assert holds, corner
        near = ten[max(0, r - 9) : r + M, max(0, c - 9) : c + M]
        assert not near.any(), corner


def test_a_used_marker_in_every_corner_fails_with_a_smaller_box(corner_runs: Any) -> None:
    corner, runs = corner_runs
    out, findings = runs["used"]
    assert _verdict(findings) == "fail", corner
    m = out.metrics
    worst = m["offroi_hotspot.method"]
    r, c = CORNERS[corner]
    rows, cols = m[f"hotspot.box_rows.{worst}"], m[f"hotspot.box_cols.{worst}"]
    # smaller than the default 10 px (no room), at least the marker and the 5-px floor
    assert M <= rows < 10 and rows == cols
    r0 = round(_value(m[f"hotspot.row.{worst}"]) * S - rows / 2)
    c0 = round(_value(m[f"hotspot.col.{worst}"]) * S - cols / 2)
    # the box holds the whole marker and touches the image edge
    assert r0 <= r and r + M <= r0 + rows and c0 <= c and c + M <= c0 + cols
    assert r0 in (0, S - rows) and c0 in (0, S - cols)
    assert _value(m["offroi_hotspot.flip_excess"]) > 0.3
    size = f"{rows}x{cols} px"
    assert any(f"hotspot boxes are {size}, not the default 10x10 px" in n for n in out.notes)
    assert not any("no region outside the ROI holds more" in n for n in out.notes)
    table = out.tables["hotspot_boxes"]
    tested = table[table["tested"]]
    assert set(tested["rows_px"]) == {rows} and set(tested["cols_px"]) == {cols}
    note = next(f for f in out.findings if f.rule == "offroi_hotspot")
    assert f"box of {size}" in note.message


def test_the_clean_and_the_encoded_only_models_stay_quiet(corner_runs: Any) -> None:
    corner, runs = corner_runs
    for mode in ("clean", "encoded"):
        out, findings = runs[mode]
        assert _verdict(findings) in (None, "pass"), (corner, mode)
        excess = out.metrics["offroi_hotspot.flip_excess"]
        assert not _value(excess) > 0.05, (corner, mode)
