"""The ``attribution`` check's default threshold rules: what each judges (``message``) and
what a finding it raises says in plain words (``found``, ``next_step``, ``figure``)."""

from __future__ import annotations

from mmaudit.checks.contract import ThresholdRule

_RETRAIN = "retrain, re-audit and compare the two reports with `mmaudit diff`"

ATTRIBUTION_RULES: dict[str, ThresholdRule] = {
    "site_word": ThresholdRule(
        metric="text.site_word_share.*",
        warn_above=0.05,
        fail_above=0.15,
        max_p=0.05,
        message="a word that tells the site apart within a label class drives predictions",
        found="The report word '{0}', which tells the hospital sites apart among cases with"
        " the same diagnosis, drives the model's text-based predictions: the model may read"
        " the site from the wording",
        next_step="find where '{0}' comes from (a site's report template or header), remove"
        f" or normalise it in the training reports, {_RETRAIN}",
        figure="text_word_ranking",
    ),
    "stoplist_words": ThresholdRule(
        metric="text.stoplist_share",
        warn_above=0.10,
        fail_above=0.25,
        message="non-clinical (stop-listed) words carry much of the text attribution",
        found="Words with no clinical meaning (the stop list) carry much of what drives the"
        " model's text-based predictions",
        next_step="see which words in the word ranking; strip report boilerplate and"
        f" templates from the training text, {_RETRAIN}",
        figure="text_word_ranking",
    ),
    "site_feature": ThresholdRule(
        metric="tabular.site_feature_share.*",
        warn_above=0.25,
        fail_above=0.50,
        max_p=0.05,
        message="a lab feature that tells the site apart within a label class drives predictions",
        found="The lab value '{0}', which differs between hospital sites among cases with the"
        " same diagnosis, drives the model's lab-based predictions",
        next_step="check whether {0} is measured differently per site (units, analyser,"
        f" reference range); harmonise it across sites or leave it out, {_RETRAIN}",
        figure="tabular_beeswarm",
    ),
    "ig_not_converged": ThresholdRule(
        metric="text.completeness_error",
        warn_above=0.05,
        message="Integrated Gradients has not converged; raise ig_steps",
        found="The word attributions are approximate: Integrated Gradients (IG) did not"
        " converge, so its word scores do not add up to the model's output",
        next_step="raise checks.attribution.params.ig_steps and run the audit again",
    ),
}
