"""Which layers the probing check probes: the captured ones of ``PROBE_LAYERS`` (or those
the user names), always the fused embedding, and a note on what stands in for the
penultimate layer when the model has none."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.records import PROBE_LAYERS

if TYPE_CHECKING:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.checks.probing.check import ProbingCheck


def choose_layers(ctx: AuditContext, p: ProbingCheck.Params) -> tuple[list[str], CheckOutput]:
    """The layers to probe, the fused embedding first when it was not asked for; the notes
    name each asked-for layer that is not captured."""
    found = CheckOutput()
    captured = [name for name in PROBE_LAYERS if name in ctx.adapter.layers]
    if p.layers is None:
        chosen = captured
    else:
        chosen = []
        for name in p.layers:
            if name in ctx.adapter.layers or "." in name:
                chosen.append(name)
            else:
                found.notes.append(f"layer '{name}' is not captured; left out")
    if "embedding" not in chosen:
        chosen.insert(0, "embedding")
    if "penultimate" not in ctx.adapter.layers:
        if ctx.adapter.source.startswith("builtin:"):
            found.notes.append(
                "built-in model: the fused embedding is the head's input, i.e. the"
                " penultimate layer; the positive control probes it"
            )
        else:
            found.notes.append(
                "no model.layers.penultimate: the fused embedding stands in for the"
                " penultimate layer in the positive control"
            )
    return chosen, found
