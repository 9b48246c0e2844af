"""The ``embedding`` check's default threshold rules: what each judges (``message``) and
what a finding it raises says in plain words (``found``, ``next_step``, ``figure``)."""

from __future__ import annotations

from mmaudit.checks.contract import ThresholdRule

_RETRAIN = "retrain, re-audit and compare the two reports with `mmaudit diff`"

EMBEDDING_RULES: dict[str, ThresholdRule] = {
    "dataset_identity": ThresholdRule(
        metric="identity_margin.*.*",
        statistic="ci_low",
        warn_above=0.0,
        max_p=0.05,
        message="neighbours agree on a nuisance attribute more than on the label"
        " (dataset identity is a stronger axis than disease in this layer)",
        found="In the model's '{0}' layer, cases sit closer to cases of the same {1} than to"
        " cases of the same diagnosis",
        next_step="see in the projection which {1} groups apart; if {1} should not matter,"
        " find what marks it in the inputs (a marker, scanner, template), harmonise or"
        f" remove it in the training data, {_RETRAIN}",
        figure="knn_agreement",
    ),
    "dataset_identity_head": ThresholdRule(
        metric="identity_margin.embedding.*",
        statistic="ci_low",
        fail_above=0.1,
        max_p=0.05,
        message="the vector the head reads is organised by a nuisance attribute more"
        " than by the label",
        found="The features the model's prediction head reads are organised by {0} more than"
        " by the diagnosis",
        next_step="find what carries {0} (the probing and saliency findings name the input"
        " and region), remove it from the training data or balance {0} across the labels,"
        f" {_RETRAIN}",
        figure="projection_embedding_pca",
    ),
    "nuisance_pure_clusters": ThresholdRule(
        metric="clusters.*.nuisance_pure_label_mixed.*",
        warn_above=0.1,
        message="clusters pure in a nuisance attribute but mixed in label",
        found="The model's '{0}' layer forms clusters that each hold one {1} but mixed diagnoses",
        next_step="look at the cluster exemplars for what the cases of one {1} share (a"
        f" marker, a scanner look), remove or balance it in the training data, {_RETRAIN}",
        figure="projection_{0}_pca",
    ),
}
