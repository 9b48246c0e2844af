"""Where an attribute's trace in a layer comes from (``ORIGINS``), from the trained probe
and the random-weights probe of that layer: *training* put it there, the *input* already
carries it, or undetermined; and the report's sentence on it."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.probes import is_encoded, verdict_floor
from mmaudit.checks.probing.records import ORIGINS, ProbeRow, layer_key

if TYPE_CHECKING:
    from mmaudit.checks.probing.check import ProbingCheck
    from mmaudit.methods.stats import Estimate


def trace_origins(
    p: ProbingCheck.Params, rows: list[ProbeRow]
) -> tuple[list[ProbeRow], CheckOutput]:
    """Per attribute x layer with a random-weights probe: did training put the attribute
    there, or does the input carry it (``probe_origin``; ``ProbeRow.origin``); one note
    sentence per attribute encoded in the fused embedding."""
    found = CheckOutput()
    traced: list[ProbeRow] = []
    for row in rows:
        if row.random is None:
            traced.append(row)
            continue
        row = replace(
            row,
            origin=probe_origin(
                row.estimate, row.random, row.result.chance, verdict_floor(row, p), p.alpha
            ),
        )
        traced.append(row)
        found.metrics[f"probe_origin.{row.attribute}.{layer_key(row.layer)}"] = row.origin
        if row.layer == "embedding" and is_encoded(row, p):
            found.notes.append(origin_sentence(row, verdict_floor(row, p), p.alpha))
    return traced, found


def probe_origin(
    trained: Estimate, random: Estimate, chance: float, floor: float, alpha: float
) -> str:
    """Where a layer's trace of an attribute comes from (one of ``ORIGINS``), from the trained
    and the random-weights probe of that layer.

    ``training``: the trained probe's CI lies wholly above the random-weights CI (and above
    chance) -- training put the attribute there, or amplified what the input carried.
    ``input``: otherwise, if a randomly initialised copy of the model already exposes it
    (its Holm-corrected permutation p < alpha -- or, without one, its CI above chance --
    and its score at the verdict floor or above): the input carries it. ``undetermined``:
    neither (the intervals overlap and random weights do not clearly expose it).
    """
    lo, hi = trained.ci_low, random.ci_high
    if lo is not None and hi is not None and lo > max(hi, chance):
        return ORIGINS[0]
    return ORIGINS[1] if random_exposes(random, chance, floor, alpha) else ORIGINS[2]


def random_exposes(random: Estimate, chance: float, floor: float, alpha: float) -> bool:
    """The random-weights probe decodes the attribute: Holm permutation p < alpha (or, without
    one, CI above chance) and a score at the verdict floor or above."""
    if random.null_p is not None and math.isfinite(random.null_p):
        significant = random.null_p < alpha
    else:
        significant = random.ci_low is not None and random.ci_low > chance
    return significant and random.value >= floor


def origin_sentence(row: ProbeRow, floor: float, alpha: float) -> str:
    """The report's sentence on where an attribute encoded in ``row.layer`` comes from."""
    assert row.random is not None
    metric = "AUROC" if row.result.metric == "auroc" else "R²"
    t, r = row.estimate, row.random
    trained = f"{metric} {t.value:.2f} [{_num(t.ci_low)}, {_num(t.ci_high)}]"
    rand = f"{metric} {r.value:.2f} [{_num(r.ci_low)}, {_num(r.ci_high)}], Holm p {_num(r.null_p)}"
    where = f"the {row.layer} layer" if row.layer != "embedding" else "the fused embedding"
    a = row.attribute
    if row.origin == ORIGINS[0]:
        if random_exposes(r, row.result.chance, floor, alpha):
            return (
                f"{a}: training amplified what the input carries -- a randomly initialised"
                f" copy of the model already exposes it in {where} ({rand}), the trained"
                f" model clearly more ({trained})"
            )
        return (
            f"{a}: training put it there -- the trained model encodes it in {where}"
            f" ({trained}) clearly above a randomly initialised copy ({rand})"
        )
    if row.origin == ORIGINS[1]:
        return (
            f"{a}: the input carries it -- a randomly initialised copy of the model already"
            f" exposes it in {where} ({rand}), and the trained model is not clearly above"
            f" that ({trained})"
        )
    return (
        f"{a}: whether the input carries it or training put it there is undetermined --"
        f" trained {trained} vs random weights {rand}: the intervals overlap and random"
        " weights do not clearly expose it"
    )


def _num(v: float | None) -> str:
    """A CI end or p-value for a sentence: two decimals, two significant digits below 0.01."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}"
