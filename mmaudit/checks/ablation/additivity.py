"""Whether the model can express cross-modal interaction at all: late fusion adds
per-modality outputs by design (its EMAP gap is reported apart, not judged); a built-in
concat fusion feeding one linear head is additive by construction, so the ``no_interaction``
rule is exempt for it (the runner reports the reason as a note, not a warning); a
projection fusion (additive while the same modalities are present) and a head whose
per-sample logit interactions are all 0 numerically get a note finding beside the
verdict, which stands: the architecture could have learned an interaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmaudit.checks.ablation.estimates import format_bound
from mmaudit.checks.ablation.logit_game import LOGIT_INTERACTION_RTOL
from mmaudit.checks.contract import AuditContext, Finding


@dataclass(frozen=True)
class Additivity:
    """The metrics (``emap.gap`` moved to ``emap.late_fusion_gap`` under late fusion), and
    the note finding or, without an EMAP gap, the note that says why the model is additive;
    ``exempt``: the rules that cannot apply to this model, with the plain reason
    (``CheckOutput.exempt_rules``)."""

    metrics: dict[str, Any]
    findings: list[Finding]
    notes: list[str]
    exempt: dict[str, str] = field(default_factory=dict)


def additivity(
    ctx: AuditContext, metrics: dict[str, Any], inter: np.ndarray, with_emap: bool
) -> Additivity:
    """Late fusion (with EMAP computed): the gap reported apart; otherwise the note on an
    additive head, if any."""
    if with_emap and _late_fusion(ctx):
        return _late_fusion_gap(metrics)
    built = _additive_head(ctx)
    if built is not None and "emap.gap" in metrics:
        return _exempt_by_construction(metrics, built)
    findings, notes = _additive_note(ctx, metrics, inter)
    return Additivity(metrics=metrics, findings=findings, notes=notes)


def _exempt_by_construction(metrics: dict[str, Any], built: str) -> Additivity:
    """A fusion that cannot express an interaction (``built`` says which) has an EMAP gap
    of 0 whatever it learned: ``no_interaction`` is exempt, with the reason in plain words
    (the runner shows it as a note with the gap as evidence), and the float-rounding
    convention goes to the notes."""
    reason = (
        f"The model can only add up its inputs, not combine them ({built}: the logit is"
        " a sum of one term per modality), so an EMAP gap of 0 is its architecture, not"
        " something training chose; the 'no cross-modal interaction' rule is not judged"
    )
    note = (
        f"additive by construction ({built}): every per-sample logit interaction below"
        f" {LOGIT_INTERACTION_RTOL:g} x the mean |logit| is float rounding and reported as 0"
    )
    return Additivity(metrics=metrics, findings=[], notes=[note], exempt={"no_interaction": reason})


def _late_fusion_gap(metrics: dict[str, Any]) -> Additivity:
    """Late fusion adds per-modality outputs by design, so an EMAP gap near 0 is expected
    rather than a finding: the gap moves to ``emap.late_fusion_gap`` (not judged by
    ``no_interaction``) and a note says so."""
    gap = metrics["emap.gap"]
    moved = {k: v for k, v in metrics.items() if k != "emap.gap"}
    moved["emap.late_fusion_gap"] = gap
    finding = Finding(
        check="ablation",
        rule="no_interaction",
        severity="note",
        message="The model is built to add up one prediction per modality (late fusion), so"
        " no interaction between modalities is expected and none is judged",
        evidence=f"EMAP gap {gap.value:.3g} (CI {format_bound(gap.ci_low)} to"
        f" {format_bound(gap.ci_high)}), reported as emap.late_fusion_gap; not judged",
        next_step="nothing to fix for this rule; if the task needs one modality to change"
        " what another means, train a fusion that can express it and re-audit",
        detail="late fusion: the model combines per-modality outputs additively by"
        " design, so its EMAP gap is reported apart (emap.late_fusion_gap), not judged by"
        " no_interaction",
        metric="emap.late_fusion_gap",
        value=None if not np.isfinite(gap.value) else float(gap.value),
    )
    return Additivity(metrics=moved, findings=[finding], notes=[])


def _additive_note(
    ctx: AuditContext, metrics: dict[str, Any], inter: np.ndarray
) -> tuple[list[Finding], list[str]]:
    """Say so when the fused head does not express interactions: by construction (a
    built-in concat fusion feeding one linear head, reached here only without an EMAP
    gap), where the same modalities are present (projection fusion), or numerically
    (every per-sample logit interaction is 0 within float tolerance). The
    ``no_interaction`` warning stands for the last two -- the architecture could express
    an interaction, and a model presented as fusing that only adds is worth one -- but the
    reader learns why its EMAP gap is 0. Returns the note finding (with an EMAP gap) or
    the note (without one)."""
    pairs = inter[~np.eye(inter.shape[0], dtype=bool)]
    numerically = bool(np.all(np.nan_to_num(pairs) == 0))
    built = _additive_head(ctx)
    averaged = _averaging_head(ctx)
    if built is None and averaged is None and not numerically:
        return [], []
    gap = metrics.get("emap.gap")
    gap_text = (
        ""
        if gap is None
        else f"; EMAP gap {gap.value:.3g},"
        f" CI [{format_bound(gap.ci_low)}, {format_bound(gap.ci_high)}]"
    )
    if averaged is not None and built is None:
        message = (
            f"additive by construction wherever the same modalities are present ({averaged}):"
            " with every modality present the logit is a sum of one term per modality, so"
            " interactions come only from changing the set of present modalities (the mean"
            f" is re-weighted when one is absent){gap_text}. The model cannot fuse its"
            " modalities, only average them"
        )
    elif built is not None:
        message = (
            f"additive by construction: the fusion cannot express interactions ({built}:"
            " the logit is a sum of one term per modality encoder), so the EMAP gap and"
            " every per-sample logit interaction are 0 whatever the model learned"
            f" (interactions below {LOGIT_INTERACTION_RTOL:g} x the mean |logit| are float"
            f" rounding, reported as 0{gap_text}). The model cannot fuse its modalities,"
            " only add them"
        )
    else:
        message = (
            "numerically additive: every per-sample logit interaction is 0 within float"
            f" tolerance ({LOGIT_INTERACTION_RTOL:g} x the mean |logit|{gap_text}), so on"
            " these data the fused head adds one term per modality and expresses no"
            " interaction"
        )
    if gap is None:
        return [], [message]
    plain = (
        "The model only averages its inputs wherever the same modalities are present, so it"
        " combines them no further than by which ones are missing"
        if averaged is not None
        else "On these data the model adds up one contribution per modality: every"
        " per-sample interaction between modalities is 0"
    )
    finding = Finding(
        check="ablation",
        rule="no_interaction",
        severity="note",
        message=plain,
        evidence=f"EMAP gap {gap.value:.3g} (CI {format_bound(gap.ci_low)} to"
        f" {format_bound(gap.ci_high)}); per-sample logit interactions below"
        f" {LOGIT_INTERACTION_RTOL:g} x the mean |logit| count as 0",
        next_step="read it with the no_interaction finding: if the task needs one modality"
        " to change what another means, train a fusion that can express it and re-audit",
        detail=message,
        figure="contributions",
        metric="emap.gap",
        value=None if not np.isfinite(gap.value) else float(gap.value),
    )
    return [finding], []


def _late_fusion(ctx: AuditContext) -> bool:
    """Whether the model declares late fusion (built-in spec), i.e. is additive by design."""
    return getattr(getattr(ctx.adapter.module, "spec", None), "fusion", None) == "late"


def _additive_head(ctx: AuditContext) -> str | None:
    """The architecture, in words, when a built-in model's fused head is additive by
    construction (concat fusion feeding one ``nn.Linear``); None otherwise or unknown."""
    module = ctx.adapter.module
    fusion = getattr(getattr(module, "spec", None), "fusion", None)
    if fusion == "concat" and isinstance(getattr(module, "head", None), torch.nn.Linear):
        return "concat fusion feeding one linear head"
    return None


def _averaging_head(ctx: AuditContext) -> str | None:
    """The architecture, in words, when a built-in model averages its present modalities'
    embeddings into one ``nn.Linear`` (projection fusion): additive as long as the set of
    present modalities stays the same; None otherwise."""
    module = ctx.adapter.module
    fusion = getattr(getattr(module, "spec", None), "fusion", None)
    if fusion == "projection" and isinstance(getattr(module, "head", None), torch.nn.Linear):
        return (
            "projection fusion: the mean of the present modalities' embeddings feeding one"
            " linear head"
        )
    return None
