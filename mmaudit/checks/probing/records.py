"""The records the probing stages pass to each other: an attribute ready to probe, one probe
of it on one layer, one erasure of it from the fused embedding, and the fragment of the
check's output a stage produces.

They live together because most stages read more than one of them (the tables and figures
read all); each is filled in by one stage and only read by the later ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmaudit.methods.probe_result import ProbeResult
    from mmaudit.methods.stats import Estimate

PROBE_LAYERS: tuple[str, ...] = ("embedding", "penultimate", "image", "text", "tabular")
VERDICTS: tuple[str, ...] = ("not_encoded", "encoded_not_used", "encoded_and_used")
# where an attribute's trace in a layer comes from, judged against the random-weights probe
ORIGINS: tuple[str, ...] = ("training", "input", "undetermined")


@dataclass
class Attribute:
    """One attribute ready to probe: values on the rows where it is known."""

    name: str
    kind: str  # categorical | continuous
    known: np.ndarray  # bool (n,)
    values: np.ndarray  # (n_known,) strings or floats
    beyond_target: bool = True  # False: too collinear with the target to condition on it


@dataclass
class ProbeRow:
    """The probe of one attribute on one layer, with its estimate and baseline."""

    attribute: str
    layer: str
    result: ProbeResult
    estimate: Estimate
    p_holm: float = math.nan
    random: Estimate | None = None  # random-weights probe; null_p = its Holm permutation p
    origin: str = ""  # one of ORIGINS once the random-weights probe ran
    marginal: Estimate | None = None  # the plain probe when ``result`` is beyond the target


@dataclass
class ErasureRow:
    """Used-or-only-encoded evidence for one attribute (erasure from the fused embedding)."""

    attribute: str
    rank: int
    dp: Estimate
    dp_random: Estimate
    excess: Estimate
    flip: Estimate
    flip_random: Estimate
    dauroc: Estimate
    dauroc_random: Estimate
    residual: float
    dp_draws: np.ndarray  # mean |dp| of each random draw: the spread the reference comes from
    p_holm: float = math.nan
    # per study: |dp| of the attribute's erasure minus the mean |dp| of the random draws (the
    # paired difference the excess averages; its spread sets the power, see ``power``)
    excess_rows: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def random_upper(self, alpha: float) -> float:
        """The (1 - alpha) quantile of mean |dp| over the random draws: the top of their
        spread, which a used attribute's erasure must exceed."""
        return float(np.quantile(self.dp_draws, 1 - alpha))

    @property
    def dp_random_sd(self) -> float:
        """SD of mean |dp| across the random draws (NaN with one draw)."""
        return float(np.std(self.dp_draws, ddof=1)) if self.dp_draws.size > 1 else math.nan


def layer_key(layer: str) -> str:
    """A layer name fit for one dotted-metric segment (module paths: dots become ``_``)."""
    return layer.replace(".", "_")


def null_p_or_nan(e: Estimate) -> float:
    """An estimate's p-value, NaN when it has none (for Holm and the tables)."""
    return math.nan if e.null_p is None else float(e.null_p)
