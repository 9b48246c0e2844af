"""The probing check's verdict per attribute, about the fused embedding: not encoded,
encoded but not used, or encoded and used -- and the rules for "used"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.probes import is_encoded
from mmaudit.checks.probing.records import VERDICTS, Attribute, ErasureRow, ProbeRow

if TYPE_CHECKING:
    from mmaudit.checks.probing.check import ProbingCheck


def judge_attributes(
    p: ProbingCheck.Params,
    attributes: list[Attribute],
    rows: list[ProbeRow],
    erasures: list[ErasureRow],
) -> tuple[dict[str, str], CheckOutput]:
    """The verdict per attribute whose probe on the fused embedding ran (``VERDICTS``, or
    ``encoded_use_untested`` when its erasure did not run); the notes name the attributes
    without a verdict and those whose erasure lies within the random spread."""
    found = CheckOutput()
    fused = {r.attribute: r for r in rows if r.layer == "embedding"}
    erased = {e.attribute: e for e in erasures}
    verdicts: dict[str, str] = {}
    for attr in attributes:
        row = fused.get(attr.name)
        if row is None:
            found.notes.append(
                f"{attr.name}: no verdict -- its probe on the fused embedding did not run"
                f" (see 'probe {attr.name} on embedding'), so whether it is encoded there,"
                " and used, is not judged"
                + ("; the erasure effects are still reported" if attr.name in erased else "")
            )
            continue
        encoded = is_encoded(row, p)
        e = erased.get(attr.name)
        if e is None and encoded:
            verdicts[attr.name] = "encoded_use_untested"
            found.metrics[f"verdict.{attr.name}"] = verdicts[attr.name]
            continue
        used = e is not None and used_by_head(e, p.alpha, p.used_min_dp)
        if e is not None and not used and excess_significant(e, p.alpha, p.used_min_dp):
            found.notes.append(
                f"{attr.name}: erasing it moves predictions more than the mean random"
                f" subspace (excess |dp| {e.excess.value:.3f}), but not beyond the spread"
                f" of the {e.dp_draws.size} random draws (|dp| {e.dp.value:.3f}; random"
                f" {e.dp_draws.min():.3f} to {e.dp_draws.max():.3f}): not called used"
            )
        verdict = VERDICTS[0] if not encoded else VERDICTS[2] if used else VERDICTS[1]
        verdicts[attr.name] = verdict
        found.metrics[f"verdict.{attr.name}"] = verdict
        found.metrics[f"encoded_and_used.{attr.name}"] = int(verdict == VERDICTS[2])
    return verdicts, found


def excess_significant(e: ErasureRow, alpha: float, min_dp: float) -> bool:
    """Erasing the attribute moves predictions more than the *mean* random subspace: excess
    |dp| with Holm p < alpha, CI above zero and at least ``min_dp``."""
    return e.p_holm < alpha and e.excess.value >= min_dp and (e.excess.ci_low or 0.0) > 0


def used_by_head(e: ErasureRow, alpha: float, min_dp: float) -> bool:
    """The verdict "used": the excess over the mean random subspace is significant *and* the
    attribute's |dp| lies beyond the spread of the random draws (above their 1 - alpha
    quantile). With many draws the mean is known precisely, so an attribute at, say, the
    70th percentile of random subspaces would pass the first test alone -- yet erasing it
    does no more than erasing a typical direction of that rank."""
    return excess_significant(e, alpha, min_dp) and e.dp.value > e.random_upper(alpha)
