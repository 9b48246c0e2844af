"""Truth by intervention for the interaction recipes: is the pair redundant, synergistic or
additive in the trained checkpoint?

Why: a recipe that makes the report and the labs restate each other, or that hides the label
in their XOR, does not make the model learn either; the ablation check's ``redundant_pair``
and ``no_interaction`` rules can only be scored against what the checkpoint does. The
family-2 generator renders the same test studies with state A (report) and state B (labs)
``removed`` (sentence left out, bilirubin set to the midpoint of the two states) or
``flipped``, and the checkpoint's outputs on those renders are the truth:

* **Redundancy**, from removals: the AUROC drop without A, without B and without both;
  ratio = 1 - max(drop A, drop B, 0) / drop both, the ablation check's formula on input
  counterfactuals instead of encoder means. ``present`` at :data:`REDUNDANT_MIN_RATIO` or
  more (with a joint drop of at least :data:`MIN_JOINT_DROP`), ``absent`` below
  :data:`NOT_REDUNDANT_MAX_RATIO`, ``between`` otherwise.
* **Interaction**, from flips, in logit space: per study the contrast
  C = f(A, B) - f(not A, B) - f(A, not B) + f(not A, not B), 0 for a model that adds one term
  per state. Its size: index = mean |C| / (mean |f(A, B) - f(not A, B)| + mean
  |f(A, B) - f(A, not B)|), 0 for an additive model and about 1 for a pure XOR. Whether it
  matters for decisions, in the currency of the audit's EMAP gap: the AUROC of the model
  minus the AUROC of its EMAP over the two states, computed from the re-rendered inputs
  instead of data partners. With both states equally likely that projection is, per study,
  the mean over the 2 x 2 grid of f(A, B') + f(A', B) - f(A', B'), which is f - C / 4. The
  model adds up (``no_interaction`` should flag) when that gap is at most
  :data:`ADDITIVE_MAX_GAP`; it interacts (the rule must stay quiet) at
  :data:`INTERACTS_MIN_GAP` or more.

A checkpoint whose AUROC on the drawn test studies is below :data:`MIN_AUROC` has not learned
the states: both claims are left out (``between``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "ADDITIVE_MAX_GAP",
    "INTERACTS_MIN_GAP",
    "MIN_AUROC",
    "MIN_JOINT_DROP",
    "NOT_REDUNDANT_MAX_RATIO",
    "REDUNDANT_MIN_RATIO",
    "RENDERS",
    "InteractionTruth",
    "additivity_truth",
    "measure_interaction",
    "redundancy_truth",
]

#: either state alone keeps this share of what both give: the pair is redundant (the
#: ``redundant_pair`` rule's own bar) ...
REDUNDANT_MIN_RATIO = 0.9
#: ... below this share it is not (between the two the claim is left out)
NOT_REDUNDANT_MAX_RATIO = 0.8
#: removing both states must cost at least this much AUROC for a ratio to mean anything
MIN_JOINT_DROP = 0.1
#: the model's AUROC minus its additive reconstruction's: it adds up at or below this ...
ADDITIVE_MAX_GAP = 0.005
#: ... and interacts at or above this
INTERACTS_MIN_GAP = 0.02
#: below this AUROC on the drawn studies the model has not learned the states
MIN_AUROC = 0.7

#: render folder -> (report_state, lab_state) of ``generate_family2``
RENDERS: dict[str, tuple[str, str]] = {
    "no_a": ("removed", "drawn"),
    "no_b": ("drawn", "removed"),
    "no_ab": ("removed", "removed"),
    "flip_a": ("flipped", "drawn"),
    "flip_b": ("drawn", "flipped"),
    "flip_ab": ("flipped", "flipped"),
}

Presence = Literal["present", "absent", "between"]


@dataclass(frozen=True)
class InteractionTruth:
    """What the state removals and flips did to the checkpoint's test outputs."""

    n_test: int
    auroc: dict[str, float]  # "full", "no_a", "no_b", "no_ab"
    redundancy_ratio: float | None  # None when removing both costs too little
    interaction_index: float | None  # None when flipping a state moves no logit
    additive_gap: float  # AUROC of the model minus AUROC of its EMAP on the state grid
    redundant: Presence  # the redundant_pair rule should flag (present) or not (absent)
    additive: Presence  # the no_interaction rule should flag (present) or not (absent)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def redundancy_truth(auroc: dict[str, float]) -> tuple[float | None, Presence]:
    """The removal ratio and its verdict from the four AUROCs."""
    full = auroc["full"]
    both = full - auroc["no_ab"]
    if both < MIN_JOINT_DROP:
        return None, "absent"
    ratio = 1.0 - max(full - auroc["no_a"], full - auroc["no_b"], 0.0) / both
    if ratio >= REDUNDANT_MIN_RATIO:
        return ratio, "present"
    return ratio, "absent" if ratio < NOT_REDUNDANT_MAX_RATIO else "between"


def additivity_truth(
    y: np.ndarray, f: np.ndarray, f_a: np.ndarray, f_b: np.ndarray, f_ab: np.ndarray
) -> tuple[float | None, float, Presence]:
    """From logits at (A, B), (not A, B), (A, not B), (not A, not B) and the labels ``y``:
    the interaction index, the AUROC gap of the model over its EMAP on the state grid
    (f - C / 4), and whether ``no_interaction`` should flag (``present``: it adds up)."""
    from sklearn.metrics import roc_auc_score

    contrast = f - f_a - f_b + f_ab
    main = np.abs(f - f_a).mean() + np.abs(f - f_b).mean()
    index = float(np.abs(contrast).mean() / main) if main > 1e-6 else None
    gap = float(roc_auc_score(y, f) - roc_auc_score(y, f - contrast / 4.0))
    if gap <= ADDITIVE_MAX_GAP:
        return index, gap, "present"
    return index, gap, "absent" if gap >= INTERACTS_MIN_GAP else "between"


def _logits(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def measure_interaction(audit_config: Path, renders: dict[str, Path]) -> InteractionTruth:
    """Run the audited checkpoint on the test studies as drawn and on every render of
    :data:`RENDERS` (``renders``: name -> generated folder) and judge the pair."""
    from sklearn.metrics import roc_auc_score

    from benchmarks.detection.intervention import checkpoint_probabilities
    from mmaudit.engine.config_file import load_config

    cfg = load_config(audit_config)
    manifests = {"full": None} | {name: renders[name] / "manifest.csv" for name in RENDERS}
    ids, y, probs = checkpoint_probabilities(cfg, manifests)
    auroc = {k: float(roc_auc_score(y, probs[k])) for k in ("full", "no_a", "no_b", "no_ab")}
    ratio, redundant = redundancy_truth(auroc)
    f = {k: _logits(v) for k, v in probs.items()}
    index, gap, additive = additivity_truth(y, f["full"], f["flip_a"], f["flip_b"], f["flip_ab"])
    if auroc["full"] < MIN_AUROC:  # nothing learned: neither claim can be scored
        redundant = additive = "between"
    return InteractionTruth(len(ids), auroc, ratio, index, gap, redundant, additive)
