"""Dataset identity: does a layer's neighbourhood agree on a nuisance attribute (site,
scanner) more than on the label? The chance-corrected agreement on each nuisance attribute
minus that on the label, with a paired bootstrap CI by patient and an adjusted p."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.embedding.agreement import kappa
from mmaudit.checks.embedding.output import OutputPart
from mmaudit.methods.stats import Estimate, adjust_pvalues, paired_bootstrap_diff

if TYPE_CHECKING:
    from mmaudit.checks.embedding.check import EmbeddingCheck
    from mmaudit.checks.embedding.factors import Factor
    from mmaudit.checks.embedding.inputs import EmbeddingInputs
    from mmaudit.checks.embedding.layer import LayerResult


def identity_margins(
    layers: dict[str, LayerResult],
    labels: list[Factor],
    nuisance: list[Factor],
    groups: np.ndarray,
    inp: EmbeddingInputs,
    p: EmbeddingCheck.Params,
) -> OutputPart:
    """Chance-corrected kNN agreement on each nuisance attribute minus that on the label:
    the ``identity_margin.*`` metrics and the ``identity`` table."""
    out = OutputPart()
    tests: list[tuple[str, str, Estimate, str, float, float]] = []
    for name, res in layers.items():
        label_ok = [f for f in labels if f.name in res.agreement]
        if not label_ok:
            continue
        g = groups[res.rows]
        # multilabel: compare with the label column the neighbours agree on best
        ref = max(label_ok, key=lambda f: kappa(res.agreement[f.name], f.codes[res.rows]))
        a_label = (res.agreement[ref.name], ref.codes[res.rows])
        for f in nuisance:
            if f.name not in res.agreement:
                continue
            est = paired_bootstrap_diff(
                kappa,
                a_label,
                (res.agreement[f.name], f.codes[res.rows]),
                groups=g,
                n_boot=p.n_boot,
                alpha=p.alpha,
                seed=inp.seed,
            )
            tests.append(
                (
                    name,
                    f.name,
                    est,
                    ref.name,
                    kappa(*a_label),
                    kappa(res.agreement[f.name], f.codes[res.rows]),
                )
            )
    if not tests:
        return out
    raw = [t[2].null_p if t[2].null_p is not None else math.nan for t in tests]
    adj = adjust_pvalues(raw, p.p_adjust)
    table = []
    for (layer, attr, est, ref, k_label, k_attr), a, r in zip(tests, adj, raw, strict=True):
        null_p = None if math.isnan(a) else float(a)
        out.metrics[f"identity_margin.{layer}.{attr}"] = Estimate(
            est.value, est.ci_low, est.ci_high, est.n, null_p
        )
        table.append(
            {
                "layer": layer,
                "attribute": attr,
                "label": ref,
                "kappa_attribute": k_attr,
                "kappa_label": k_label,
                "margin": est.value,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "p_raw": r,
                "p_adjusted": a,
            }
        )
    out.tables["identity"] = pd.DataFrame(table)
    return out
