"""The ``probing`` check's default threshold rules: what each judges (``message``) and what
a finding it raises says in plain words (``found``, ``next_step``, ``figure``). ``{0}`` is
the attribute, ``{1}`` the layer."""

from __future__ import annotations

from mmaudit.checks.contract import ThresholdRule

_ENCODED = (
    "The model's '{1}' layer reveals the patient's {0}, even among cases with the same diagnosis"
)
_ENCODED_NEXT = (
    "encoded does not mean used: the 'used' finding says whether predictions depend on"
    " it; if {0} should not be in the model, find where it enters (the saliency and attribution"
    " findings name the input and region), remove it from the training data, retrain and"
    " re-audit"
)

PROBING_RULES: dict[str, ThresholdRule] = {
    "encoded": ThresholdRule(
        metric="probe_auroc.*.*",
        warn_above=0.55,
        max_p=0.05,
        message="attribute decodable well above the permutation null (Holm-corrected),"
        " within target classes (beyond the target; plain probe: within_target false or"
        " a multilabel target)",
        found=_ENCODED,
        next_step=_ENCODED_NEXT,
        figure="probe_heatmap",
    ),
    "encoded_r2": ThresholdRule(
        metric="probe_r2.*.*",
        warn_above=0.05,
        max_p=0.05,
        message="continuous attribute decodable above the permutation null, within"
        " target classes (beyond the target; plain probe: within_target false or a"
        " multilabel target)",
        found=_ENCODED,
        next_step=_ENCODED_NEXT,
        figure="probe_heatmap",
    ),
    "used": ThresholdRule(
        metric="encoded_and_used.*",
        fail_above=0.5,
        message="attribute encoded in the fused embedding and used by the head: erasing"
        " it moves predictions more than erasing a random subspace of the same size",
        found="The model's predictions use the patient's {0}: erasing {0} from the features"
        " its prediction head reads moves the predictions more than erasing random"
        " information of the same size",
        next_step="find where {0} enters (a saliency hotspot, a site word, a lab value) and"
        " remove it from the training data (crop or in-paint a marker, normalise the text),"
        " or balance {0} across the labels; retrain, re-audit and compare the two reports"
        " with `mmaudit diff`",
        evidence="erasing {0} moves predictions by a mean |Δp| of {m[erasure.dp.$0]}, erasing"
        " random information of the same size by {m[erasure.dp_random.$0]}; share of"
        " decisions flipped {m[erasure.flip.$0]} against {m[erasure.flip_random.$0]}",
        figure="erasure",
    ),
}
