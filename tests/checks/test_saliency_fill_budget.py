"""Saliency's hotspot occlusion within the memory budget: the filled copies of a batch
(every candidate box and its control draws, per image) are made for as many rows at once
as fit half of ``runtime.memory_budget_mb``. Split into chunks of 3 rows, the fills (drawn
per image) and so every occlusion metric are those of the whole batch at once."""

from __future__ import annotations

from typing import Any

import pytest
from test_saliency import run_check, toy_context, toy_dir  # noqa: F401 (a fixture)

from mmaudit.methods.memory_budget import MemoryBudget

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _occlusion(out: Any) -> dict[str, float]:
    return {
        k: getattr(v, "value", v)
        for k, v in out.metrics.items()
        if k.startswith(("occlusion.", "hotspot.roi_overlap"))
    }


@pytest.mark.parametrize("infill", ["linear", "donor"])
def test_fills_in_chunks_of_rows_change_no_occlusion_metric(
    toy_dir,  # noqa: F811 (the fixture imported above)
    infill: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    params = {"methods": ["gradcam"], "infill": infill, "sanity": False}
    whole, _ = run_check(toy_context(toy_dir, kwargs={"focus": "corner"}), **params)
    original = MemoryBudget.rows_held
    held: list[int] = []

    def three_rows(self: MemoryBudget, what: str, bytes_per_row: int, share: float = 1.0) -> int:
        held.append(original(self, what, bytes_per_row, share))
        return 3

    monkeypatch.setattr(MemoryBudget, "rows_held", three_rows)
    split, _ = run_check(toy_context(toy_dir, kwargs={"focus": "corner"}), **params)
    assert held and held[0] >= 32  # 1 GB holds a whole batch: only the patch splits it
    a, b = _occlusion(whole), _occlusion(split)
    assert a and a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6, nan_ok=True), k
    assert a["occlusion.flip_excess.gradcam"] == b["occlusion.flip_excess.gradcam"]


def test_deletion_insertion_variants_in_chunks_change_no_faithfulness_metric(
    toy_dir,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    """Deletion / insertion makes 2 + orders x 2 x inner-fractions variants of every image:
    made one variant at a time and run 5 images per forward (a tight budget), its AUCs are
    those of the whole batch at once."""
    params = {"methods": ["gradcam"], "sanity": False, "scan": False, "faithfulness_samples": 16}

    def faith(out: Any) -> dict[str, float]:
        return {
            k: getattr(v, "value", v)
            for k, v in out.metrics.items()
            if k.startswith(("deletion_", "insertion_"))
        }

    whole = faith(run_check(toy_context(toy_dir, kwargs={"focus": "corner"}), **params)[0])
    held: list[str] = []
    original_rows = MemoryBudget.rows_per_chunk

    def one_variant(self: MemoryBudget, what: str, bytes_per_row: int, share: float = 1.0) -> int:
        held.append(what)
        return 1

    def five_images(self: MemoryBudget, family: str, *args: Any, **kwargs: Any) -> int:
        rows = original_rows(self, family, *args, **kwargs)
        return 5 if family == "deletion / insertion" else rows

    monkeypatch.setattr(MemoryBudget, "rows_held", one_variant)
    monkeypatch.setattr(MemoryBudget, "rows_per_chunk", five_images)
    split = faith(run_check(toy_context(toy_dir, kwargs={"focus": "corner"}), **params)[0])
    assert "deletion / insertion variants" in held
    assert whole and whole.keys() == split.keys()
    assert "deletion_auc.gradcam" in whole and "insertion_gain.gradcam" in whole
    for k in whole:
        assert split[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-6, nan_ok=True), k
