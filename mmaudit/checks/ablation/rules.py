"""The ``ablation`` check's default threshold rules: what each judges (``message``) and
what a finding it raises says in plain words (``found``, ``next_step``, ``figure``)."""

from __future__ import annotations

from mmaudit.checks.contract import ThresholdRule

_RETRAIN = "retrain, re-audit and compare the two reports with `mmaudit diff`"

ABLATION_RULES: dict[str, ThresholdRule] = {
    "modality_ignored": ThresholdRule(
        metric="drop.loo.*",
        statistic="ci_high",
        warn_below=0.01,
        message="removing this modality changes nothing within the CI: the model ignores it"
        " (or another modality makes it redundant, see redundancy.*)",
        found="Removing the {0} input does not change the model's performance: the model"
        " ignores {0}, or another input already carries what {0} holds",
        next_step="check that {0} reaches the model (preprocessing, missing values) and"
        " whether another input restates it (the redundancy rows); if {0} should matter,"
        f" train with the other inputs randomly dropped, {_RETRAIN}",
        figure="contributions",
    ),
    "one_modality_dominates": ThresholdRule(
        metric="share.*",
        statistic="ci_low",
        warn_above=0.8,
        message="one modality carries nearly all of the model's performance",
        found="Nearly all of the model's performance comes from the {0} input; the other"
        " inputs add little",
        next_step="check whether {0} gives the answer away (e.g. a report that states the"
        " diagnosis) and whether the other inputs reach the model; if they should"
        f" contribute, train with {{0}} randomly dropped, {_RETRAIN}",
        figure="contributions",
    ),
    "redundant_pair": ThresholdRule(
        metric="redundancy.*_x_*",
        warn_above=0.9,
        message="either modality of this pair alone gives what both give",
        found="The {0} and {1} inputs are redundant: either one alone gives the model what"
        " both give",
        next_step="if both are meant to add information, check that one does not restate"
        " the other (e.g. a report quoting the lab values); if it does, the model copes"
        " when one of them is missing, which the robustness figure shows",
        figure="contributions",
    ),
    "missing_modality_drop": ThresholdRule(
        metric="robustness.*.realistic_drop",
        warn_above=0.05,
        fail_above=0.10,
        max_p=0.05,
        message="performance drops sharply when this modality is missing at a realistic rate",
        found="The model's performance drops sharply when the {0} input is missing as often"
        " as it is in practice",
        next_step="train with {0} randomly left out (modality dropout) or give the model a"
        f" way to mark it missing, {_RETRAIN}; until then, do not use the model where {{0}}"
        " is often missing",
        figure="robustness",
    ),
    "no_interaction": ThresholdRule(
        metric="emap.gap",
        statistic="ci_high",
        warn_below=0.005,
        message="the model's additive projection (EMAP) does as well as the model: it adds"
        " up one contribution per modality and uses no cross-modal interaction (a note says"
        " when the architecture cannot express one)",
        found="The model adds up one contribution per input and uses no interaction between"
        " them: its additive approximation (EMAP) does as well as the model",
        next_step="if the task needs one input to change what another means (a lab value"
        " that changes how an opacity reads), use a fusion that can express it (attention,"
        f" or a non-linear head over the joined features), {_RETRAIN}; otherwise this is"
        " expected",
        figure="contributions",
    ),
}
