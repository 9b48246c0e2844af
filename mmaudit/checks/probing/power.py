"""What a pass of probing's ``used`` verdict rules out: the smallest erasure effect (excess
mean |Δp| over random erasures of the same rank) that the rule detects with power 0.8 at
the audited n (``erasure.mde_dp.<attr>``), and the note that says so ("a pass means no
erasure effect larger than X on <attr> at this n").

The rule (:func:`~mmaudit.checks.probing.verdicts.used_by_head`) calls an attribute used
when the observed excess X = mean |Δp| - mean random |Δp| clears every one of:

- its one-sided p < alpha after Holm over the m erased attributes (at Holm's first level,
  X > z(1 - alpha / m) * se; the p-value is the normal approximation from the bootstrap SE);
- its percentile CI above zero (X > z(1 - alpha / 2) * se);
- ``used_min_dp``;
- the random draws' spread: the attribute's |Δp| above their 1 - alpha quantile, i.e.
  X > q(1 - alpha) - mean of the draws (the observed draws, held fixed).

With X ~ N(δ, se²) the rule fires with probability 0.8 when
δ = max(z * se, used_min_dp, spread) + z(0.8) * se, z the larger of the first two z's.
se is the bootstrap SE of the excess in closed form: the per-patient spread of the paired
per-study difference (|Δp| of the attribute minus the mean |Δp| of the random draws, summed
within each patient, as the bootstrap resamples patients whole) over sqrt(patients), plus the
spread between the J random draws (each resample redraws J of them: variance / J). No extra
model forward is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.probing.records import VERDICTS, ErasureRow

if TYPE_CHECKING:
    from mmaudit.checks.probing.check import ProbingCheck

POWER = 0.8


@dataclass(frozen=True)
class UsedPower:
    """The power of the ``used`` rule for one attribute at this audit's n.

    ``mde``: the smallest true excess |Δp| detected with power 0.8 (NaN: none can be);
    ``se``: the excess's standard error (patients and random draws); ``sd_patient``: the
    per-patient SD of the paired difference (``se`` of the patients alone times
    sqrt(patients)); ``spread``: the random draws' 1 - alpha quantile above their mean;
    ``bound``: which part of the rule sets the smallest excess it can call used."""

    mde: float
    se: float
    sd_patient: float
    n_patients: int
    spread: float
    bound: str


def min_detectable_excess(
    se: float,
    *,
    alpha: float,
    n_tests: int = 1,
    min_dp: float = 0.0,
    spread: float = 0.0,
    power: float = POWER,
) -> float:
    """The smallest true excess δ that the ``used`` rule detects with probability ``power``
    when the observed excess is N(δ, se²): max(z * se, min_dp, spread) + z(power) * se, z the
    stricter of Holm's first level (1 - alpha / n_tests, one-sided) and the two-sided CI's
    lower end (1 - alpha / 2). NaN when ``se`` is not finite."""
    if not math.isfinite(se) or se < 0:
        return math.nan
    return max(_z_test(alpha, n_tests) * se, min_dp, spread) + NormalDist().inv_cdf(power) * se


def _z_test(alpha: float, n_tests: int) -> float:
    """How many SEs the observed excess must clear: Holm's first level, one-sided, or the
    percentile CI's lower end above zero, whichever is stricter."""
    return NormalDist().inv_cdf(1 - min(alpha / max(n_tests, 1), alpha / 2))


def patient_se(values: np.ndarray, groups: np.ndarray | None) -> tuple[float, int]:
    """The bootstrap SE of the mean of ``values`` when patients are resampled whole, in
    closed form (the linearised ratio mean): sqrt(sum_g (T_g - n_g * mean)^2) / N, T_g the
    patient's sum and n_g its rows; and the number of patients (rows without an id are
    one-row patients, as in ``stats.bootstrap_groups``). NaN under two patients."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if groups is None:
        codes = np.arange(n)
    else:
        codes = pd.factorize(pd.Series(groups, dtype=object))[0].copy()
        missing = codes < 0
        codes[missing] = codes.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    n_groups = int(np.unique(codes).size)
    if n_groups < 2:
        return math.nan, n_groups
    centred = np.bincount(codes, weights=v - v.mean())
    return float(np.sqrt(np.sum(centred**2)) / n), n_groups


def used_power(
    row: ErasureRow, groups: np.ndarray | None, alpha: float, n_tests: int, min_dp: float
) -> UsedPower:
    """The ``used`` rule's detectable effect for one erased attribute, from its per-study
    paired differences and its random draws (see the module docstring). The MDE is NaN
    when it exceeds what an erasure can do (mean |Δp| is at most 1, so the excess at most
    1 - the random draws' mean |Δp|): too few patients for any effect to be significant."""
    se_pat, n_pat = patient_se(row.excess_rows, groups)
    draws = row.dp_draws
    se = math.sqrt(se_pat**2 + float(np.var(draws)) / max(draws.size, 1))
    spread = row.random_upper(alpha) - float(draws.mean())
    mde = min_detectable_excess(se, alpha=alpha, n_tests=n_tests, min_dp=min_dp, spread=spread)
    bound = max(
        ("significance", _z_test(alpha, n_tests) * se),
        ("used_min_dp", min_dp),
        ("random spread", spread),
        key=lambda kv: kv[1],
    )[0]
    if not mde <= 1.0 - float(draws.mean()):
        mde = math.nan
    return UsedPower(mde, se, se_pat * math.sqrt(n_pat), n_pat, spread, bound)


def used_power_output(
    rows: list[ErasureRow],
    groups: np.ndarray | None,
    p: ProbingCheck.Params,
    verdicts: dict[str, str],
) -> CheckOutput:
    """``erasure.mde_dp.<attr>`` for every erased attribute, and for each one not called
    used a note saying what its pass rules out at this n (or that it rules out nothing)."""
    out = CheckOutput()
    for row in rows:
        a = row.attribute
        pw = used_power(row, groups, p.alpha, len(rows), p.used_min_dp)
        out.metrics[f"erasure.mde_dp.{a}"] = pw.mde
        if verdicts.get(a) == VERDICTS[2]:
            continue
        how = (
            f"SE {pw.se:.4f} from a per-patient SD of {pw.sd_patient:.3f} and the spread of"
            f" {row.dp_draws.size} random draws, whose {100 * (1 - p.alpha):g}th percentile"
            f" lies {pw.spread:.3f} above their mean; one-sided alpha {p.alpha:g} / {len(rows)}"
            f" attribute{'s' if len(rows) != 1 else ''}"
        )
        if not math.isfinite(pw.mde):
            out.notes.append(
                f"used: a pass on {a} rules out no erasure effect at this n: with"
                f" {pw.n_patients} patients no excess |Δp| an erasure can have reaches"
                f" significance ({how})"
            )
            continue
        bound = {
            "significance": "set by the test's noise at this n",
            "used_min_dp": f"set mostly by used_min_dp {p.used_min_dp:g}, not by n",
            "random spread": "set mostly by the random draws' spread, not by n",
        }[pw.bound]
        out.notes.append(
            f"used: a pass on {a} means no erasure effect larger than {pw.mde:.3f} in excess"
            f" |Δp| over random erasures (rank {row.rank}) at this n ({pw.n_patients}"
            f" patients, power {POWER:g}; {bound}; {how})"
        )
    return out
