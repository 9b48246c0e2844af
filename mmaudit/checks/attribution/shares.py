"""Stage: each modality's share of a sample's total |attribution|, two ways.

Integrated Gradients over all encoder outputs at once (MM-SHAP style: one method and one
output scale for every modality, so the shares are comparable), set in one table beside
exact per-sample logit Shapley shares over every coalition of encoder outputs (the
cache's memoised encoder-level ablation). With the coalition game's removal equal to the
IG reference (the default) the two play the same game and agree exactly for an additive
fusion; a gap is interaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from mmaudit.checks.attribution.records import Fragment, SampleColumn
from mmaudit.checks.attribution.rows import completeness_error, row_groups
from mmaudit.checks.plotting import literal_text, pyplot
from mmaudit.methods.integrated_gradients import layer_integrated_gradients, scores_with_layers
from mmaudit.methods.shapley import shapley_values
from mmaudit.methods.stats import bootstrap_ci

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.checks.attribution.check import AttributionCheck
    from mmaudit.checks.contract import AuditContext
    from mmaudit.engine.data import Batch
    from mmaudit.engine.removal import RemovalHow
    from mmaudit.methods.attribution_target import Target
    from mmaudit.methods.memory_budget import MemoryBudget


def modality_shares(
    ctx: AuditContext,
    p: AttributionCheck.Params,
    target: Target,
    budget: MemoryBudget | None = None,
) -> Fragment:
    """Per-sample IG shares of every modality with an encoder layer, beside the coalition
    Shapley shares, on the samples that have every one of those modalities."""
    out = Fragment()
    ds, adapter = ctx.dataset, ctx.adapter
    mods = [m for m in ds.modalities if m in adapter.layers]
    cols = [ds.modalities.index(m) for m in mods]
    rows = np.flatnonzero(ds.present[:, cols].all(1))
    embs = {m: torch.from_numpy(np.array(ctx.cache.embeddings(m))).float() for m in mods}
    # the reference is the one InferenceCache.ablated(..., "encoder") removes a modality
    # with (mean over the rows where it is present / zeros), so IG and the coalition game
    # below play the same game and differ only in method
    base = {}
    for m in mods:
        ref = ctx.cache.encoder_mean(m).float()
        base[m] = ref if p.share_baseline == "mean" else torch.zeros_like(ref)
    score_fn = target.score_fn()

    def attribute(b: Batch) -> tuple[np.ndarray, np.ndarray]:
        n = len(b)
        idx = b.index.cpu()
        dev = adapter.device
        layers = {m: (embs[m][idx].to(dev), base[m].to(dev)) for m in mods}
        attr = layer_integrated_gradients(
            adapter,
            b,
            layers,
            score_fn,
            n_steps=p.ig_steps,
            steps_per_pass=p.ig_steps_per_pass,
            method=p.ig_method,
            budget=budget,
            pass_name="modality-share IG",
        )
        contrib = torch.stack([attr[m].reshape(n, -1).sum(1) for m in mods], 1)
        refs = {m: base[m].to(dev).expand(n, *base[m].shape[1:]) for m in mods}
        fb = scores_with_layers(adapter, b, refs, score_fn)
        return contrib.detach().cpu().numpy(), fb.cpu().numpy()

    parts = ctx.cache.map_batches(attribute, grad=True, desc="modality shares", indices=rows)
    contrib = np.concatenate([q[0] for q in parts])
    fb = np.concatenate([q[1] for q in parts])
    fx = target.scores(ctx.cache.sweep().logits)[rows]
    error, note = completeness_error(
        contrib.sum(1), np.abs(contrib).sum(1), fx, fb, "shares: the modalities"
    )
    out.metrics["shares.completeness_error"] = error
    if note is not None:
        out.notes.append(note)
    absc = np.abs(contrib)
    share = _abs_shares(contrib)
    removal: RemovalHow = p.share_baseline if p.ablation_removal == "auto" else p.ablation_removal
    phi = _coalition_shapley(ctx, target, mods, rows, removal)  # (n, M)
    abl_share = _abs_shares(phi)
    keep = np.isfinite(share).all(1)
    both = keep & np.isfinite(abl_share).all(1)
    groups = row_groups(ctx, rows)
    boot: dict[str, Any] = {"n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}
    table = []
    for k, m in enumerate(mods):
        g = None if groups is None else groups[keep]
        est = bootstrap_ci(np.mean, share[keep, k], groups=g, **boot)
        g2 = None if groups is None else groups[both]
        abl = bootstrap_ci(np.mean, abl_share[both, k], groups=g2, **boot)
        diff = bootstrap_ci(np.mean, share[both, k] - abl_share[both, k], groups=g2, **boot)
        out.metrics[f"shares.{m}"] = est
        out.metrics[f"shares.ablation.{m}"] = abl
        out.metrics[f"shares.diff_vs_ablation.{m}"] = diff
        out.columns.append(SampleColumn(f"share.{m}", rows, share[:, k]))
        out.columns.append(SampleColumn(f"ablation_share.{m}", rows, abl_share[:, k]))
        table.append(
            {
                "modality": m,
                "share": est.value,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "ablation_share": abl.value,
                "ablation_ci_low": abl.ci_low,
                "ablation_ci_high": abl.ci_high,
                "diff": diff.value,
                "diff_ci_low": diff.ci_low,
                "diff_ci_high": diff.ci_high,
                "mean_contribution": float(contrib[:, k].mean()),
                "mean_abs_contribution": float(absc[:, k].mean()),
                "mean_shapley": float(phi[:, k].mean()),
                "n": int(keep.sum()),
                "n_both": int(both.sum()),
                "method": f"IG at encoder outputs, reference {p.share_baseline}",
                "ablation_method": f"exact logit Shapley over {1 << len(mods)} coalitions,"
                f" encoder level, removal {removal}",
            }
        )
    diffs = [r["diff"] for r in table if np.isfinite(r["diff"])]
    out.metrics["shares.max_abs_diff_vs_ablation"] = (
        float(max(abs(d) for d in diffs)) if diffs else float("nan")
    )
    out.tables["modality_shares"] = pd.DataFrame(table)
    if removal == p.share_baseline:
        reading = (
            f" (removal '{removal}', the same reference as the IG path); they agree exactly"
            " for an additive fusion, a gap means the modalities interact."
        )
    else:
        reading = (
            f" (removal '{removal}', a different reference from the IG path's"
            f" '{p.share_baseline}': the diff mixes method and reference, so a gap does"
            " not by itself mean the modalities interact)."
        )
    out.notes.append(
        "shares: IG shares set beside exact per-sample logit Shapley shares from the"
        f" coalition game{reading} The ablation check's own logit_share.* uses its"
        " strategy (default permute), a different reference"
    )
    out.figures["modality_shares"] = _shares_figure(share[keep], mods)
    if len(rows) < len(ds):
        out.notes.append(f"shares: computed on the {len(rows)} samples with every modality present")
    if target.label is not None:
        out.notes.append(f"shares: IG and coalition Shapley of {target.description}")
    return out


def _abs_shares(values: np.ndarray) -> np.ndarray:
    """Each column's share of the row's total |value| (NaN where the total is 0)."""
    absv = np.abs(values)
    tot = absv.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, absv / tot, np.nan)


def _coalition_shapley(
    ctx: AuditContext, target: Target, mods: list[str], rows: np.ndarray, removal: RemovalHow
) -> np.ndarray:
    """Exact per-sample Shapley values (n, M) of the attributed score over every coalition
    of ``mods``, each coalition one memoised encoder-level sweep of the cache (only the
    fusion and head run; the ``ablation`` check's sweeps are reused when they match)."""
    removes = [
        {m: removal for j, m in enumerate(mods) if not (s >> j) & 1} for s in range(1 << len(mods))
    ]
    sweeps = ctx.cache.ablated_many(removes, "encoder")
    values = np.stack([target.scores(sw.logits)[rows] for sw in sweeps])
    return shapley_values(values).T


def _shares_figure(share: np.ndarray, mods: list[str]) -> Figure:
    """A box per modality: the spread of its per-sample IG share."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(mods) + 2, 3.4))
    if len(share):
        ax.boxplot([share[:, k] for k in range(len(mods))], showmeans=True)
    ax.set_xticks(range(1, len(mods) + 1), mods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of |attribution| per sample")
    ax.set_title("modality shares (IG at encoder outputs)", fontsize=10)
    fig.tight_layout()
    return literal_text(fig)
