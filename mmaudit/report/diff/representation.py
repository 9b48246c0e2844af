"""How two audits' representations compare on the samples both saved: linear CKA per
layer, prediction churn, and the rank correlation of per-sample maps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mmaudit.report.diff.result import DiffResult
from mmaudit.report.diff.samples import Samples, read_npz
from mmaudit.report.document import Report


def compare_representations(base: Samples, new: Samples, result: DiffResult) -> None:
    """Prediction churn on the shared ids and linear CKA per embedding layer both reports
    saved, into ``result``; a note where either cannot be computed, and why."""
    from mmaudit.methods.cka import linear_cka

    unsaved = [
        side
        for side, s in (("base", base), ("new", new))
        if not (s.report.data.get("saved") or {}).get("predictions", True)
    ]
    if unsaved:
        result.notes.append(
            f"predictions not saved in the {' and '.join(unsaved)} report"
            " (report.save_predictions: false): no prediction churn, and performance moves"
            " are judged by CI overlap, not paired by sample"
        )
    if base.predictions is not None and new.predictions is not None:
        merged = base.predictions.merge(new.predictions, on="id", suffixes=("_a", "_b"))
        result.shared_samples = len(merged)
        probs = [c[:-2] for c in merged.columns if c.startswith("prob.") and c.endswith("_a")]
        if probs and len(merged):
            kind = str(base.report.data.get("target_kind", "binary"))
            pa = merged[[f"{c}_a" for c in probs]].to_numpy()
            pb = merged[[f"{c}_b" for c in probs]].to_numpy()
            if kind == "multilabel" or len(probs) == 1:
                # one decision per output at 0.5; churn = share of (sample, output) changed
                result.prediction_churn = float(np.mean((pa >= 0.5) != (pb >= 0.5)))
            else:
                result.prediction_churn = float(np.mean(pa.argmax(1) != pb.argmax(1)))
        if not len(merged):
            result.notes.append(_no_shared_ids_note(base, new, "no predictions to pair"))
    if "__ids__" not in base.embeddings or "__ids__" not in new.embeddings:
        if not base.embeddings or not new.embeddings:
            result.notes.append("no embeddings saved in one of the reports: no CKA")
        return
    ids_a = {str(i): k for k, i in enumerate(base.embeddings["__ids__"])}
    pairs = [(ids_a[str(i)], k) for k, i in enumerate(new.embeddings["__ids__"]) if str(i) in ids_a]
    if len(pairs) < 4:
        result.notes.append(_no_shared_ids_note(base, new, "fewer than 4 shared samples: no CKA"))
        return
    ia, ib = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    for layer in sorted(set(base.embeddings) & set(new.embeddings) - {"__ids__"}):
        xa = base.embeddings[layer][ia].astype(np.float64)
        xb = new.embeddings[layer][ib].astype(np.float64)
        result.representation[layer] = {
            "cka": _finite(linear_cka(xa, xb)),
            "cka_debiased": _finite(linear_cka(xa, xb, debiased=True)),
            "n": float(len(pairs)),
        }


def _no_shared_ids_note(base: Samples, new: Samples, what: str) -> str:
    """Why two reports share no ids, when redaction explains it."""
    hashes = {base.report.data.get("id_hash"), new.report.data.get("id_hash")}
    redacted = [bool(s.report.data.get("redacted")) for s in (base, new)]
    if any(redacted) and not all(redacted):
        return f"{what}: one report is redacted (hashed ids), the other is not"
    if all(redacted) and "random salt" in hashes:
        return (
            f"{what}: redacted reports hash ids with a random salt per report; set the same"
            " MMAUDIT_REDACT_SALT for both audits to pair them"
        )
    return what


def compare_saved_maps(
    base: Report, new: Report, base_dir: Path, new_dir: Path, result: DiffResult
) -> None:
    """Mean per-sample Spearman correlation of saved per-sample maps (e.g. saliency)."""
    from scipy.stats import spearmanr

    for name in sorted(set(base.checks) & set(new.checks)):
        pa, pb = base.checks[name].tables.get("arrays"), new.checks[name].tables.get("arrays")
        if not pa or not pb:
            continue
        gone = [str(d / p) for d, p in ((base_dir, pa), (new_dir, pb)) if not (d / p).is_file()]
        if gone:
            result.notes.append(f"{name}: per-sample maps missing, no rank correlation: {gone}")
            continue
        da, db = read_npz(base_dir / pa), read_npz(new_dir / pb)
        if "__ids__" not in da or "__ids__" not in db:
            continue
        ids_a = {str(i): k for k, i in enumerate(da["__ids__"])}
        pairs = [(ids_a[str(i)], k) for k, i in enumerate(db["__ids__"]) if str(i) in ids_a]
        for key in sorted(set(da) & set(db) - {"__ids__"}):
            xa, xb = da[key], db[key]
            if xa.ndim < 2 or xa.shape[1:] != xb.shape[1:] or not pairs:
                continue
            rhos = []
            for i, j in pairs:
                a, b = xa[i].ravel().astype(float), xb[j].ravel().astype(float)
                if np.ptp(a) > 0 and np.ptp(b) > 0:
                    rhos.append(spearmanr(a, b).statistic)
            result.array_rank_correlation[f"{name}.{key}"] = (
                _finite(float(np.mean(rhos))) if rhos else None
            )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
