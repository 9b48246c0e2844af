"""Stage: SHAP values of the lab features, the image and report fixed at their observed
values, on a capped sample.

Mean |SHAP| per feature with CIs by patient, the additivity error of the values, the
same site-within-label test as the report words (per feature: its value and its
missingness; on too few rows off each label class's main site a lab it does not flag is
reported untested, ``site_power``), importance per subgroup of every configured
attribute, and the plots (beeswarm, dependence, subgroups; ``tabular_figures``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmaudit.checks.attribution.records import Fragment, SampleColumn, unique_key
from mmaudit.checks.attribution.rows import cap_rows, pooled_ratio, row_groups, site_values
from mmaudit.checks.attribution.site_power import (
    SITE_TEST_NEXT_STEP,
    SiteCells,
    configured_rule,
    untested_site_claims,
)
from mmaudit.checks.attribution.tabular_figures import (
    beeswarm_figure,
    dependence_figure,
    subgroup_figure,
)
from mmaudit.methods.stats import Estimate, adjust_pvalues, bootstrap_ci
from mmaudit.methods.text_attribution import SiteGivenLabel, association, metric_key

if TYPE_CHECKING:
    from mmaudit.checks.attribution.check import AttributionCheck
    from mmaudit.checks.contract import AuditContext
    from mmaudit.methods.attribution_target import Target
    from mmaudit.methods.memory_budget import MemoryBudget


def attribute_labs(
    ctx: AuditContext,
    p: AttributionCheck.Params,
    target: Target,
    budget: MemoryBudget | None = None,
) -> Fragment:
    """SHAP values of the labs toward ``target``'s score, their importance, site test,
    subgroup breakdown and plots; the permutation explainer's model calls hold at most what
    ``budget`` allows."""
    out = Fragment()
    from mmaudit.methods.tabular_shap import gradient_shap, permutation_shap

    ds, adapter = ctx.dataset, ctx.adapter
    assert ds.tabular is not None and ds.tabular_missing is not None
    names = list(ctx.config.data.tabular.columns)  # type: ignore[union-attr]
    missing = ds.tabular_missing.numpy()
    empty = missing.all(0)
    if empty.any():
        out.notes.append(
            "tabular: columns missing in every row (their SHAP value is 0 by construction,"
            f" not ranked): {', '.join(n for n, e in zip(names, empty, strict=True) if e)}"
        )
    eligible = np.flatnonzero(ds.present[:, ds.modalities.index("tabular")])
    rng = ctx.rng("attribution.tabular")
    rows = cap_rows(eligible, p.max_shap_samples, rng)
    bg_rows = np.sort(rng.choice(eligible, size=min(p.n_background, len(eligible)), replace=False))
    background = ds.tabular[bg_rows].numpy().astype(np.float32)
    fixed = (
        {
            m: ctx.cache.embeddings(m)
            for m in ds.modalities
            if m != "tabular" and m in adapter.layers
        }
        if adapter.supports_hooks
        else {}
    )
    out.notes.append(
        f"tabular: SHAP ({p.tabular_method}) on {len(rows)} of {len(eligible)} samples with"
        f" labs (max_shap_samples={p.max_shap_samples}), background {len(bg_rows)} rows"
    )
    if target.label is not None:
        out.notes.append(f"tabular: SHAP values explain {target.description}")
    score_fn = target.score_fn()
    if p.tabular_method == "permutation":
        res = permutation_shap(
            ctx.cache,
            rows,
            background,
            score_fn,
            fixed=fixed,
            max_evals=p.shap_max_evals,
            seed=ctx.seed,
            budget=budget,
        )
    else:
        res = gradient_shap(
            ctx.cache,
            rows,
            background,
            score_fn,
            fixed=fixed,
            n_samples=p.gradient_samples,
            seed=ctx.seed,
        )
    values = res.values
    fx = target.scores(ctx.cache.sweep().logits)[rows]
    out.metrics["tabular.n_samples"] = len(rows)
    out.metrics["tabular.additivity_error"] = pooled_ratio(
        np.abs(res.base + values.sum(1) - fx), np.abs(fx - res.base)
    )
    groups = row_groups(ctx, rows)
    boot: dict[str, Any] = {"n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}
    absval = np.abs(values)
    total = absval.sum(1)
    site, why = site_values(ctx, p.site_attribute)
    if site is None:
        out.notes.append(f"tabular: site test not run: {why}")
    label = np.asarray(ctx.target)[rows]
    # the dependence plots colour by the explained label (a multilabel target's column)
    shown_label = label if label.ndim == 1 else label[:, target.output]
    rows_table, tests = [], []
    taken: set[str] = set()
    ok = site[rows] != "" if site is not None else np.zeros(len(rows), dtype=bool)
    tester = (
        SiteGivenLabel(site[rows][ok], label[ok], p.n_boot, ctx.seed) if site is not None else None
    )
    for j, feat in enumerate(names):
        if empty[j]:
            continue
        imp = bootstrap_ci(np.mean, absval[:, j], groups=groups, **boot)
        share = bootstrap_ci(pooled_ratio, absval[:, j], total, groups=groups, **boot)
        x = np.column_stack([ds.tabular[rows, j].numpy(), missing[rows, j].astype(float)])
        test = None
        assoc_site = float("nan")
        if site is not None and tester is not None:
            test = tester.test(x[ok])
            assoc_site = association(x[ok], site[rows][ok])
        tests.append(test)
        key = unique_key(metric_key(feat), taken)
        out.metrics[f"tabular.importance.{key}"] = imp
        rows_table.append(
            {
                "feature": feat,
                "key": key,
                "mean_abs_shap": imp.value,
                "ci_low": imp.ci_low,
                "ci_high": imp.ci_high,
                "share": share,
                "site_association": assoc_site,
                "label_association": association(x, label),
                "site_within_label": test.value if test is not None else None,
                "p": test.null_p if test is not None else None,
            }
        )
    raw_p = [r["p"] if r["p"] is not None else np.nan for r in rows_table]
    adj = adjust_pvalues(raw_p, p.multiplicity) if raw_p else np.array([])
    site_shares: dict[str, Estimate] = {}
    for k, r in enumerate(rows_table):
        sh: Estimate = r.pop("share")
        r["share"], r["p_adjusted"] = sh.value, None if np.isnan(adj[k]) else float(adj[k])
        site_shares[f"tabular.site_feature_share.{r['key']}"] = Estimate(
            sh.value, sh.ci_low, sh.ci_high, len(rows), r["p_adjusted"]
        )
    if site is not None and tester is not None:
        # too few rows off each label class's main site: a lab not cleared is untested
        claims = untested_site_claims(
            "site_feature",
            configured_rule(ctx, "site_feature"),
            site_shares,
            SiteCells.of(site[rows][ok], label[ok]),
            p.min_site_test_rows,
        )
        site_shares = claims.metrics
        out.coverage.extend(claims.coverage)
        out.exempt_rules.update(claims.exempt)
        out.exempt_next_steps.update(dict.fromkeys(claims.exempt, SITE_TEST_NEXT_STEP))
    out.metrics.update(site_shares)
    importance = pd.DataFrame(rows_table).sort_values("mean_abs_shap", ascending=False)
    importance.insert(0, "rank", np.arange(1, len(importance) + 1))
    out.tables["tabular_importance"] = importance.drop(columns=["key"])
    if len(importance):
        out.metrics["tabular.top_feature"] = str(importance["feature"].iloc[0])
    shap_frame = pd.DataFrame(values, columns=names)
    shap_frame.insert(0, "id", [ds.ids[i] for i in rows])
    out.tables["tabular_shap_values"] = shap_frame
    for j, feat in enumerate(names):
        out.columns.append(SampleColumn(f"shap.{feat}", rows, values[:, j]))
    raw = _raw_values(ctx, rows, names)
    order = [names.index(f) for f in importance["feature"]]
    out.figures["tabular_beeswarm"] = beeswarm_figure(values, raw, names, order)
    for j in order[: p.dependence_plots]:
        out.figures[f"tabular_dependence_{metric_key(names[j])}"] = dependence_figure(
            raw[:, j], values[:, j], shown_label, names[j], target.label or "label"
        )
    sub = _subgroup_importance(ctx, rows, absval, names, empty)
    if not sub.empty:
        out.tables["tabular_importance_by_subgroup"] = sub
        out.figures["tabular_subgroups"] = subgroup_figure(sub)
    return out


def _raw_values(ctx: AuditContext, rows: np.ndarray, names: list[str]) -> np.ndarray:
    """Lab values in their original units (NaN where missing), for plots."""
    ds = ctx.dataset
    values = ds.tabular[rows].numpy().astype(float)  # type: ignore[index]
    for j, n in enumerate(names):
        mu, sd = ds.tabular_stats.get(n, (0.0, 1.0))
        values[:, j] = values[:, j] * sd + mu
    values[ds.tabular_missing[rows].numpy()] = np.nan  # type: ignore[index]
    return values


def _subgroup_importance(
    ctx: AuditContext, rows: np.ndarray, absval: np.ndarray, names: list[str], empty: np.ndarray
) -> pd.DataFrame:
    """Mean |SHAP| per feature within each group of each configured attribute."""
    attrs = ctx.dataset.attributes
    table = []
    for attr in attrs.columns:
        spec = ctx.config.data.attributes.get(attr)
        col = attrs[attr].to_numpy()[rows]
        if spec is not None and spec.kind == "continuous":
            numeric = pd.to_numeric(pd.Series(col), errors="coerce")
            if spec.bins:
                edges = [-np.inf, *spec.bins, np.inf]
                labels = pd.cut(numeric, edges, right=False).astype(str)
            else:
                labels = pd.qcut(numeric, 4, duplicates="drop").astype(str)
            labels = labels.where(numeric.notna(), "missing").to_numpy()
        else:
            labels = np.array(["missing" if v is None or v != v else str(v) for v in col])
        for group in sorted(set(labels)):
            sel = labels == group
            for j, feat in enumerate(names):
                if empty[j]:
                    continue
                table.append(
                    {
                        "attribute": attr,
                        "group": group,
                        "n": int(sel.sum()),
                        "feature": feat,
                        "mean_abs_shap": float(absval[sel, j].mean()),
                    }
                )
    return pd.DataFrame(table)
