"""Whether the saliency maps can be trusted: the cascading model-parameter randomisation of
Adebayo et al. (2018), and the trust verdict the ``sanity_failed`` rule gives each method."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from mmaudit.checks.contract import CheckOutput, Finding
from mmaudit.checks.findings import judge
from mmaudit.checks.saliency.layers import image_root
from mmaudit.checks.saliency.maps import Maps, map_pass, subset_pass
from mmaudit.checks.saliency.metrics import value
from mmaudit.checks.saliency.params import CAMS
from mmaudit.checks.saliency.setting import Setting
from mmaudit.methods.map_similarity import minmax, spearman_rows, ssim
from mmaudit.methods.randomisation import cascade_stages, graft, parametrised_leaves, randomise_

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter


@dataclass(frozen=True)
class SanityResult:
    """What the randomisation test decided and left for later stages."""

    #: method -> trusted (True unless the ``sanity_failed`` rule flags it)
    trusted: dict[str, bool]
    #: the fully randomised model's maps of the sanity subset; None when the test did not run
    random: Maps | None = None
    #: per stage and method: mean Spearman, SSIM and similarity; None when the test did not run
    curve: pd.DataFrame | None = None


def sanity_check(s: Setting, main: Maps) -> tuple[SanityResult, CheckOutput]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) of the image encoder.

    Every stage randomises more of the encoder (top first) and recomputes every method's
    maps, Integrated Gradients and occlusion included, on one seeded subset. Per map the
    Spearman correlation and the SSIM with the trained model's map are taken, and their
    smaller value is the map's similarity: a map barely changed only when it kept both
    its pixel ranking and its local structure. Each alone has a known blind spot: SSIM is
    high for any two sparse maps (their empty background agrees), Spearman for any two
    maps sharing a smooth position bias. The fully randomised stage gives
    ``sanity.similarity.<m>`` with a patient-bootstrap CI, and the ``sanity_failed``
    threshold rule (the YAML one, on its CI lower bound by default) decides trust: a
    method the rule flags is untrusted, loses its p-values and proposes no hotspot. One
    setting thus decides both the warning and what is dropped."""

    p, out = s.params, CheckOutput()
    trusted = {m: True for m in s.methods}
    if not p.sanity:
        return SanityResult(trusted), out
    if not s.adapter.supports_hooks:
        out.notes.append("sanity check skipped: a TorchScript model cannot be randomised")
        return SanityResult(trusted), out
    root = image_root(s.adapter, s.cam_layers)
    original = s.adapter.module.get_submodule(root) if root else s.adapter.module
    leaves = parametrised_leaves(original)
    if not leaves:
        out.notes.append("sanity check skipped: the image encoder has no parameters")
        return SanityResult(trusted), out
    n_stages = len(leaves) if p.sanity_stages == "all" else p.sanity_stages
    stages = cascade_stages(leaves, n_stages)
    pool = s.ig_rows if s.ig_rows is not None else s.rows
    sub = s.subset(p.sanity_samples, "saliency.sanity", pool)
    pos_sub = np.searchsorted(main.rows, sub)
    copy_enc = copy.deepcopy(original)
    gen = torch.Generator().manual_seed(int(s.ctx.rng("saliency.randomise").integers(2**31)))
    done: list[str] = []
    curve: list[dict[str, Any]] = []
    cam_methods = [m for m in s.methods if m in CAMS]
    final: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    random: Maps | None = None
    for k, names in enumerate(stages):
        randomise_(copy_enc, [n for n in names if n not in done], gen)
        done = list(names)
        shadow = _shadow(s.adapter, graft(s.adapter.module, root, copy_enc))
        tag = f"sanity stage {k + 1}/{len(stages)}"
        part = map_pass(s, shadow, sub, tag, cam_methods, keep_images=False)
        if s.ig_rows is not None:
            part = subset_pass(s, shadow, sub, part, f"IG / occlusion, {tag}")
        if k == len(stages) - 1:
            random = part
        for m, t in part.thumbs.items():
            sims = _similarities(main.thumbs[m][pos_sub], t)
            if sims is None:
                continue  # no map to compare, or every map constant on both sides
            rho, sim, ok = sims
            curve.append(
                {
                    "stage": k + 1,
                    "layers_randomised": len(names),
                    "fraction": len(names) / len(leaves),
                    "deepest_randomised": names[-1],
                    "method": m,
                    "spearman": float(np.nanmean(rho)),
                    "ssim": float(np.nanmean(sim)),
                    "similarity": float(np.nanmean(np.fmin(rho, sim))),
                    "n": int(ok.sum()),
                }
            )
            if k == len(stages) - 1:  # only the fully randomised model decides trust
                final[m] = (rho, sim, sub[ok])
    for m in sorted(({row["method"] for row in curve} | set(part.thumbs)) - set(final)):
        out.notes.append(
            f"sanity check of {m}: no comparison with the fully randomised model (no finite"
            " randomised map, or every map constant on both sides), so no sanity verdict;"
            " earlier stages do not stand in for it and its findings stay unchecked"
        )
    for m, (rho, sim, rows) in final.items():
        out.metrics[f"sanity.spearman.{m}"] = s.boot(rho, rows)
        out.metrics[f"sanity.ssim.{m}"] = s.boot(sim, rows)
        # NaN Spearman: both maps constant (dead); no evidence either way
        both = np.where(np.isnan(rho), np.nan, np.fmin(rho, sim))
        out.metrics[f"sanity.similarity.{m}"] = s.boot(both, rows)
    trusted.update(_trust_verdict(s, list(final), out))
    sanity_curve = pd.DataFrame(curve)
    out.tables["sanity_curve"] = sanity_curve
    out.metrics["sanity.layers"] = len(leaves)
    out.metrics["sanity.stages"] = len(stages)
    return SanityResult(trusted, random, sanity_curve), out


def _trust_verdict(s: Setting, methods: list[str], out: CheckOutput) -> dict[str, bool]:
    """Untrust every method whose sanity metric the ``sanity_failed`` rule flags (the same
    judgement the report's warning comes from), with a note saying what is dropped; the
    verdicts (``sanity.trusted.<m>``) and notes are added to ``out``."""
    rule = s.rules["sanity_failed"]
    metrics = out.metrics
    trusted: dict[str, bool] = {}
    mine = {
        k: v
        for k, v in metrics.items()
        if k.startswith("sanity.") and k.rsplit(".", 1)[-1] in methods
    }
    flagged = {f.metric: f for f in judge("saliency", mine, {"sanity_failed": rule})}
    for m in methods:
        hit = next((f for k, f in flagged.items() if k and k.rsplit(".", 1)[-1] == m), None)
        trusted[m] = hit is None
        metrics[f"sanity.trusted.{m}"] = int(hit is None)
        if hit is None:
            continue
        stat = "" if rule.statistic == "value" else f" ({rule.statistic})"
        out.findings.append(
            Finding(
                check="saliency",
                rule="sanity_untrusted",
                severity="note",
                message=f"The {m} saliency maps cannot be trusted: they stay similar when the"
                f" model's weights are randomised, so the {m} location results raise no"
                " finding and propose no hotspot",
                evidence=f"{hit.evidence}; Spearman"
                f" {value(metrics[f'sanity.spearman.{m}']):.2f}, SSIM"
                f" {value(metrics[f'sanity.ssim.{m}']):.2f}",
                next_step=f"read the methods that pass this test instead of {m}",
                detail=f"{m}: maps of the fully randomised model stay similar to the"
                f" trained model's ({hit.metric}{stat} = {hit.value:.2f}, above the"
                f" sanity_failed limit {hit.threshold:g}): the {m} saliency findings"
                " cannot be trusted; their location metrics carry no p-value, raise no"
                " finding and propose no hotspot",
                figure="randomisation_curve",
                metric=hit.metric,
                value=hit.value,
                threshold=hit.threshold,
            )
        )
    return trusted


def _shadow(adapter: ModelAdapter, module: torch.nn.Module) -> ModelAdapter:
    """A copy of the adapter that runs ``module`` (a grafted tree) instead of its own."""
    shadow = copy.copy(adapter)
    shadow.module = module
    shadow._handles = []
    return shadow


def _similarities(
    ref: np.ndarray, rand: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-map Spearman and SSIM between trained ``ref`` and randomised ``rand`` thumbnails
    ``(n, s, s)``, and the mask of maps compared; NaN (both) where both maps are constant;
    None when nothing can be compared."""
    ok = np.isfinite(ref).all(axis=(1, 2)) & np.isfinite(rand).all(axis=(1, 2))
    if not ok.any():
        return None
    a, b = ref[ok].reshape(ok.sum(), -1), rand[ok].reshape(ok.sum(), -1)
    rho = spearman_rows(a, b)
    # one map constant (e.g. dead after randomisation), the other not: unrelated
    rho = np.where(np.isnan(rho) & (a.std(1) != b.std(1)), 0.0, rho)
    if np.isnan(rho).all():
        return None
    sim = ssim(minmax(torch.from_numpy(ref[ok])), minmax(torch.from_numpy(rand[ok])))
    sim = np.where(np.isnan(rho), np.nan, sim.numpy().astype(np.float64))
    return rho, sim, ok
