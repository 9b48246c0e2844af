"""The probing check's random-weights baseline on a capped, stratified subset of rows: the
rows it used are recorded, the draw keeps every (label, attribute) cell in proportion, and
on a planted effect the verdicts and origins are those of the uncapped baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_probing import _run, origin_context

from mmaudit.checks.probing import random_weights


def _fake_randomised(random: dict[str, np.ndarray], seen: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The random-weights layer outputs ``random`` (every row), on the rows asked for."""

    def fake(ctx, layers, rows=None):  # type: ignore[no-untyped-def]
        seen["rows"] = rows
        return {k: v if rows is None else v[rows] for k, v in random.items()}

    return fake


def test_capped_baseline_records_its_rows_and_keeps_the_planted_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """site is in the pixels (random weights expose it: "input"), sex only in a learnt filter
    ("training"): half the rows give the same origins and verdicts as all 400."""
    ctx, random = origin_context()
    seen: dict[str, Any] = {}
    monkeypatch.setattr(random_weights, "randomised_embeddings", _fake_randomised(random, seen))
    full = _run(ctx, random_baseline=True).metrics
    assert seen["rows"] is None  # up to the cap: every row, the copy's own sweep
    out = _run(ctx, random_baseline=True, random_max_rows=200)
    capped, rows = out.metrics, seen["rows"]
    assert len(rows) == 200 and np.array_equal(rows, np.unique(rows))
    assert full["random_baseline.rows"] == 400 and capped["random_baseline.rows"] == 200
    assert any("random-weights baseline on 200 of 400 rows" in c for c in out.coverage)
    assert capped["probe_random.site.embedding"].n == 200
    for attr in ("site", "sex"):
        assert capped[f"probe_origin.{attr}.embedding"] == full[f"probe_origin.{attr}.embedding"]
        assert capped[f"verdict.{attr}"] == full[f"verdict.{attr}"]
        # the trained model's probes do not depend on the baseline's rows
        assert capped[f"probe_auroc.{attr}.embedding"] == full[f"probe_auroc.{attr}.embedding"]
    assert capped["probe_origin.site.embedding"] == "input"
    assert capped["probe_origin.sex.embedding"] == "training"


def test_the_draw_is_stratified_by_label_and_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, random = origin_context()
    seen: dict[str, Any] = {}
    monkeypatch.setattr(random_weights, "randomised_embeddings", _fake_randomised(random, seen))
    _run(ctx, random_baseline=True, random_max_rows=100)
    rows = seen["rows"]
    attrs = ctx.dataset.attributes
    cell = np.char.add(
        np.char.add(np.asarray(ctx.target).astype(str), attrs["site"].to_numpy().astype(str)),
        attrs["sex"].to_numpy().astype(str),
    )
    keys, sizes = np.unique(cell, return_counts=True)
    taken = {k: int((cell[rows] == k).sum()) for k in keys}
    for k, size in zip(keys, sizes, strict=True):
        assert abs(taken[k] - 100 * size / len(cell)) < 1  # largest-remainder rounding
    # seeded: the same rows again
    _run(ctx, random_baseline=True, random_max_rows=100)
    assert np.array_equal(seen["rows"], rows)
