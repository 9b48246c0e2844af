"""Check ``performance`` on multiclass and multilabel targets, against scikit-learn.

The check is run on a stand-in context (logits given, no model), so every metric can be
compared with sklearn on the very same probabilities; a planted signal in one class or
label and none in another makes the per-class numbers able to fail.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    roc_auc_score,
)

from mmaudit.checks.performance import PerformanceCheck

N = 400


def _context(kind: str, logits: np.ndarray, y: np.ndarray, names: list[str]) -> SimpleNamespace:
    dataset = SimpleNamespace(
        class_names=names,
        ids=np.array([f"s{i}" for i in range(len(y))]),
        modalities=("image",),
        present=np.ones((len(y), 1), dtype=bool),
    )
    return SimpleNamespace(
        cache=SimpleNamespace(sweep=lambda: SimpleNamespace(logits=logits)),
        config=SimpleNamespace(data=SimpleNamespace(target=SimpleNamespace(kind=kind))),
        target=y,
        groups=None,
        seed=0,
        dataset=dataset,
    )


def _run(ctx: SimpleNamespace):  # type: ignore[no-untyped-def]
    check = PerformanceCheck(PerformanceCheck.Params(n_boot=200))
    return check.run(ctx)  # type: ignore[arg-type]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _binary_ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Reference ECE: equal-width bins, |positive rate - mean probability| weighted by size."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            (which == b).mean() * abs(y[which == b].mean() - p[which == b].mean())
            for b in range(bins)
            if (which == b).any()
        )
    )


@pytest.fixture(scope="module")
def multiclass() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three classes; the logits separate 'severe' well and 'mild' from 'moderate' not at all."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, N)
    logits = rng.normal(0, 1, (N, 3))
    logits[:, 2] += 3.0 * (y == 2)
    return y, logits, _softmax(logits)


def test_multiclass_metrics_match_sklearn(multiclass) -> None:  # type: ignore[no-untyped-def]
    y, logits, prob = multiclass
    names = ["mild", "moderate", "severe"]
    out = _run(_context("multiclass", logits, y, names))
    m = out.metrics
    assert m["auroc_macro"].value == pytest.approx(
        roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-12
    )
    onehot = np.eye(3)[y]
    assert m["auprc_macro"].value == pytest.approx(
        average_precision_score(onehot, prob, average="macro"), abs=1e-12
    )
    for k, name in enumerate(names):
        assert m[f"auroc.{name}"].value == pytest.approx(
            roc_auc_score(y == k, prob[:, k]), abs=1e-12
        )
        assert m[f"prevalence.{name}"] == pytest.approx(np.mean(y == k))
    assert m["accuracy"].value == pytest.approx(accuracy_score(y, prob.argmax(1)))
    assert np.array_equal(out.tables["confusion"].to_numpy(), confusion_matrix(y, prob.argmax(1)))
    # the planted signal: 'severe' is separated; 'mild' only borrows from it (one-vs-rest,
    # a severe row lowers the other probabilities), so it ranks well below
    assert m["auroc.severe"].value > 0.9 and m["auroc.severe"].ci_low > 0.85
    assert m["auroc.mild"].ci_high < m["auroc.severe"].ci_low
    for key in ("auroc_macro", "auprc_macro", "accuracy", "ece"):
        assert m[key].ci_low <= m[key].value <= m[key].ci_high


def test_multilabel_metrics_match_sklearn() -> None:
    """Label 'effusion' carries a signal and is calibrated; 'nodule' is noise."""
    rng = np.random.default_rng(1)
    y = (rng.random((N, 2)) < [0.4, 0.3]).astype(np.float32)
    logits = np.column_stack([np.where(y[:, 0] == 1, 1.5, -1.5), np.zeros(N)])
    logits = logits + rng.normal(0, 1.0, (N, 2))
    prob = 1 / (1 + np.exp(-logits))
    names = ["effusion", "nodule"]
    out = _run(_context("multilabel", logits, y, names))
    m = out.metrics
    pred = (prob >= 0.5).astype(int)
    for k, name in enumerate(names):
        yk = y[:, k].astype(int)
        assert m[f"auroc.{name}"].value == pytest.approx(roc_auc_score(yk, prob[:, k]), abs=1e-12)
        assert m[f"auprc.{name}"].value == pytest.approx(
            average_precision_score(yk, prob[:, k]), abs=1e-12
        )
        assert m[f"accuracy.{name}"].value == pytest.approx(accuracy_score(yk, pred[:, k]))
        assert m[f"ece.{name}"].value == pytest.approx(_binary_ece(yk, prob[:, k]), abs=1e-9)
        table = out.tables[f"confusion_{name}"]
        assert np.array_equal(table.to_numpy(), confusion_matrix(yk, pred[:, k], labels=[0, 1]))
        assert list(table.index) == [f"true not {name}", f"true {name}"]
    assert m["auprc_macro"] == pytest.approx(average_precision_score(y, prob, average="macro"))
    assert m["auroc_macro"] == pytest.approx(roc_auc_score(y, prob, average="macro"))
    # planted: effusion is predicted, nodule is not; nodule's probability is 0.5 +- noise
    # while its prevalence is 0.3, so it is the badly calibrated one
    assert m["auroc.effusion"].ci_low > 0.8
    assert m["auroc.nodule"].ci_low < 0.5 < m["auroc.nodule"].ci_high
    assert m["ece.nodule"].value > m["ece.effusion"].value + 0.1


def test_rows_without_any_input_are_counted_and_noted(multiclass) -> None:  # type: ignore[no-untyped-def]
    y, logits, _ = multiclass
    ctx = _context("multiclass", logits, y, ["none", "mild", "severe"])
    ctx.dataset.present[[3, 9, 27], 0] = False  # the model's only modality, gone
    out = _run(ctx)
    assert out.metrics["missing.all"] == 3 == out.metrics["missing.image"]
    assert any(n.startswith("3 row(s) have none of the model's inputs") for n in out.notes)
    clean = _run(_context("multiclass", logits, y, ["none", "mild", "severe"]))
    assert clean.metrics["missing.all"] == 0
    assert not any("none of the model's inputs" in n for n in clean.notes)
