"""The glossary of the jargon the views use: index.html lists every term, summary.md only
those its own text uses (``mmaudit.report.markdown.summary_terms``)."""

from __future__ import annotations

# (term, words that bring it into summary.md, one-line meaning): the jargon the views use;
# index.html lists them all
GLOSSARY: list[tuple[str, tuple[str, ...], str]] = [
    (
        "AUROC / AUPRC",
        ("auroc", "auprc"),
        "area under the ROC / precision-recall curve; 0.5 AUROC is chance.",
    ),
    (
        "ECE",
        ("ece",),
        "expected calibration error: mean |predicted probability - observed rate| over"
        " probability bins, weighted by bin size; 0 is perfectly calibrated.",
    ),
    (
        "EOD",
        ("eod",),
        "equalised-odds difference: the larger of the TPR gap and the FPR gap between the"
        " best and worst group at one global threshold.",
    ),
    (
        "loo / koi",
        ("loo", "koi"),
        "leave-one-out (that modality removed, the others kept) / keep-one-in (that"
        " modality alone, the others removed); removed means shuffled across patients by"
        " default (ablation's removal parameter).",
    ),
    (
        "EMAP",
        ("emap",),
        "empirical multimodally-additive projection (Hessel & Lee 2020): the best model"
        " with no cross-modal interaction; emap.gap = full model minus EMAP, 0 means no"
        " interaction is used.",
    ),
    (
        "MM-SHAP",
        ("mm-shap", "mmshap"),
        "per-sample Shapley shares of the logit across modalities (Parcalabescu & Frank"
        " 2023): how much each modality moves each prediction, right or wrong.",
    ),
    (
        "Shapley share",
        ("share", "shares", "shapley"),
        "a modality's Shapley value as a share of the total: averaged over every order of"
        " adding modalities, what adding it changes.",
    ),
    (
        "IG",
        ("ig",),
        "Integrated Gradients: gradients summed along a path from a baseline input to the"
        " real one; attributions add up to the logit change.",
    ),
    (
        "Grad-CAM / HiResCAM / LayerCAM",
        ("gradcam", "hirescam", "layercam"),
        "class activation maps from a convolutional layer: channels weighted by their mean"
        " gradient (Grad-CAM), gradient x activation per location (HiResCAM), positive"
        " gradients per location (LayerCAM, finer maps).",
    ),
    (
        "SpRAy",
        ("spray",),
        "spectral relevance analysis (Lapuschkin et al. 2019): saliency maps clustered to"
        " find groups of cases explained by the same pattern, such as a marker.",
    ),
    (
        "off-ROI / hotspot",
        ("roi", "offroi", "hotspot"),
        "attribution outside the region of interest (lung mask) against its area share;"
        " a hotspot is a box off the ROI whose in-painting is tested for changed decisions"
        " (as large as the room around its peak allows, down to half the default side).",
    ),
    (
        "probe",
        ("probe",),
        "a linear model trained on a layer's output to predict an attribute (cross-"
        "validated); decodable means encoded, not necessarily used. For a binary /"
        " multiclass target the judged score is within target classes (beyond what the label"
        " explains); probe_auroc_marginal is the plain score.",
    ),
    (
        "LEACE",
        ("leace", "erasure"),
        "least-squares concept erasure (Belrose et al. 2023): the smallest linear change"
        " that makes an attribute linearly undecodable; if the predictions then move more"
        " than for a random subspace, the model uses it.",
    ),
    (
        "kNN lift",
        ("knn",),
        "how often a row's nearest neighbours (other patients) share its label or"
        " attribute, divided by chance agreement (the sum of squared level shares); 1 is"
        " chance.",
    ),
    (
        "identity margin",
        ("identity",),
        "chance-corrected neighbour agreement on a nuisance attribute (site) minus that on"
        " the label: above 0, the space is organised by site more than by disease.",
    ),
    (
        "CKA",
        ("cka",),
        "centred kernel alignment (linear): similarity of two representations of the same"
        " samples, 1 = identical up to rotation and scale (mmaudit diff).",
    ),
    (
        "p / CI",
        (),
        "p: permutation p-value, corrected for multiple tests (Holm) where a family is"
        " tested; shown as < 0.001 below that; CI: 95% bootstrap interval, resampled by"
        " patient.",
    ),
]
