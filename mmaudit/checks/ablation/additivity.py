"""Whether the model can express cross-modal interaction at all: late fusion adds
per-modality outputs by design (its EMAP gap is reported apart, not judged); a built-in
concat or projection fusion feeding one linear head is additive by construction; a head
whose per-sample logit interactions are all 0 is additive numerically. Each case gets a
note finding beside (or instead of) the ``no_interaction`` verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmaudit.checks.ablation.estimates import format_bound
from mmaudit.checks.ablation.logit_game import LOGIT_INTERACTION_RTOL
from mmaudit.checks.contract import AuditContext, Finding


@dataclass(frozen=True)
class Additivity:
    """The metrics (``emap.gap`` moved to ``emap.late_fusion_gap`` under late fusion), and
    the note finding or, without an EMAP gap, the note that says why the model is additive."""

    metrics: dict[str, Any]
    findings: list[Finding]
    notes: list[str]


def additivity(
    ctx: AuditContext, metrics: dict[str, Any], inter: np.ndarray, with_emap: bool
) -> Additivity:
    """Late fusion (with EMAP computed): the gap reported apart; otherwise the note on an
    additive head, if any."""
    if with_emap and _late_fusion(ctx):
        return _late_fusion_gap(metrics)
    findings, notes = _additive_note(ctx, metrics, inter)
    return Additivity(metrics=metrics, findings=findings, notes=notes)


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
        message="late fusion: the model combines per-modality outputs additively by"
        f" design, so no cross-modal interaction is expected (EMAP gap {gap.value:.3g},"
        f" CI [{format_bound(gap.ci_low)}, {format_bound(gap.ci_high)}]; reported as"
        " emap.late_fusion_gap, not judged)",
        metric="emap.late_fusion_gap",
        value=None if not np.isfinite(gap.value) else float(gap.value),
    )
    return Additivity(metrics=moved, findings=[finding], notes=[])


def _additive_note(
    ctx: AuditContext, metrics: dict[str, Any], inter: np.ndarray
) -> tuple[list[Finding], list[str]]:
    """Say so when the fused head cannot express interactions: by construction (a
    built-in concat fusion feeding one linear head) or numerically (every per-sample
    logit interaction is 0 within float tolerance). The ``no_interaction`` warning
    stands -- a model presented as fusing that only adds is worth one -- but the reader
    learns that its EMAP gap of 0 is the architecture, not what training chose. Returns
    the note finding (with an EMAP gap) or the note (without one)."""
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
    finding = Finding(
        check="ablation",
        rule="no_interaction",
        severity="note",
        message=message,
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
