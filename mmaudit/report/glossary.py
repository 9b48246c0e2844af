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
        ("eod", "equalised-odds", "equalised"),
        "equalised-odds difference: the larger of the TPR gap and the FPR gap between the"
        " best and worst group at one global threshold.",
    ),
    (
        "TPR / FPR",
        ("tpr", "fpr", "true-positive", "false-positive", "alarms"),
        "true-positive rate (the share of diseased cases the model calls positive) / false-"
        "positive rate (the share of healthy cases it calls positive, false alarms).",
    ),
    (
        "decision threshold",
        ("threshold", "operating"),
        "the score above which the model's output counts as positive; subgroups uses one"
        " threshold for everyone (Youden's J on all audited rows by default).",
    ),
    (
        "calibration / recalibration",
        ("calibrated", "calibration", "recalibrate", "platt", "isotonic"),
        "a calibrated model's 0.8 means the disease is present in 8 of 10 such cases;"
        " recalibration (Platt scaling: a logistic fit; isotonic regression: a monotone step"
        " fit) maps scores to observed rates on held-out data without retraining.",
    ),
    (
        "loo / koi",
        ("loo", "koi", "leave-one-out", "keep-one-in"),
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
        "modality / input",
        ("modality", "modalities", "inputs"),
        "one kind of input the model reads: the image, the report text or the lab values"
        " (tabular).",
    ),
    (
        "modality dropout",
        ("dropout", "dropped"),
        "training with one input at a time randomly left out, so that the model learns to"
        " use the others and to cope when one is missing.",
    ),
    (
        "redundant inputs",
        ("redundant", "redundancy"),
        "two inputs are redundant when either one alone gives the model what both give"
        " (removed the model's own missing-input way).",
    ),
    (
        "Shapley share",
        ("share", "shares", "shapley"),
        "a modality's Shapley value as a share of the total: averaged over every order of"
        " adding modalities, what adding it changes.",
    ),
    (
        "IG",
        ("ig", "integrated"),
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
        "saliency map",
        ("saliency", "maps"),
        "a heat map over the image of how much each pixel or region drives the prediction"
        " (Grad-CAM, HiResCAM, LayerCAM, IG).",
    ),
    (
        "randomisation test",
        ("randomised", "randomisation", "sanity", "spearman", "ssim"),
        "the sanity test of Adebayo et al. (2018): maps that barely change (Spearman rank"
        " correlation and SSIM, structural similarity) when the model's weights are"
        " randomised do not show what the model learned.",
    ),
    (
        "SpRAy",
        ("spray", "cluster", "clusters", "exemplar"),
        "spectral relevance analysis (Lapuschkin et al. 2019): saliency maps clustered to"
        " find groups of cases explained by the same pattern, such as a marker.",
    ),
    (
        "off-ROI / hotspot",
        ("roi", "off-roi", "offroi", "hotspot", "interest", "box", "control"),
        "attribution outside the region of interest (ROI, the lung mask) against its area"
        " share; a hotspot is a box off the ROI whose in-painting is tested for changed"
        " decisions against a same-size control box elsewhere (as large as the room around"
        " its peak allows, down to half the default side).",
    ),
    (
        "border band",
        ("border",),
        "the strip along the image edges where markers, labels and burnt-in text sit; its"
        " share of the saliency is compared with its area share.",
    ),
    (
        "crop / in-paint",
        ("crop", "in-paint", "in-painting"),
        "remedies for a marker in the images: cut the image so the marker is gone (crop),"
        " or fill the marker's box from the surrounding tissue (in-paint), in the training"
        " data, then retrain.",
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
        "layer / prediction head / fused embedding",
        ("layer", "head", "fused"),
        "a layer is a named model output mmaudit reads (model.layers): each encoder's output"
        " (image, text, tabular) and the fused embedding, the features the prediction head"
        " (the final classifier) reads.",
    ),
    (
        "encoded / used",
        ("encoded", "reveals", "used"),
        "encoded: a probe can read an attribute from a layer; used: removing it changes the"
        " predictions. Encoded alone is not a shortcut.",
    ),
    (
        "LEACE",
        ("leace", "erasure", "erasing"),
        "least-squares concept erasure (Belrose et al. 2023): the smallest linear change"
        " that makes an attribute linearly undecodable; if the predictions then move more"
        " than for a random subspace, the model uses it.",
    ),
    (
        "projection",
        ("projection", "pca", "t-sne", "tsne"),
        "a 2-D picture of a layer's outputs (PCA or t-SNE), coloured by label and attribute.",
    ),
    (
        "kNN lift",
        ("knn", "neighbours"),
        "how often a row's nearest neighbours (other patients) share its label or"
        " attribute, divided by chance agreement (the sum of squared level shares); 1 is"
        " chance.",
    ),
    (
        "identity margin",
        ("identity", "closer"),
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
        ("p", "ci", "p-value", "permutation"),
        "p: permutation p-value (how often shuffled data give as large an effect),"
        " corrected for multiple tests where a family is tested; shown as < 0.001 below"
        " that; CI: 95% bootstrap interval (the check's alpha sets the level), resampled by"
        " patient.",
    ),
    (
        "Holm correction",
        ("holm", "holm-corrected", "corrected"),
        "Holm's step-down correction for multiple tests: with many attributes, layers or"
        " groups tested, each p-value is raised so that the chance of any false alarm stays"
        " at 5%.",
    ),
    (
        "stop list",
        ("stop", "stop-list", "stoplist", "boilerplate"),
        "words with no clinical meaning (the, of, report template words) that should carry"
        " little of what drives a text-based prediction.",
    ),
    (
        "flip excess",
        ("flip", "flips", "flipped", "excess"),
        "the share of decisions that change when a box is covered (in-painted), minus the"
        " share that change when a control box of the same size, and about the same change"
        " to the image, is covered instead; 0 means the box matters no more than any other.",
    ),
    (
        "enrichment",
        ("enrichment",),
        "a hotspot box's share of a map's positive attribution divided by its share of the"
        " image's area: 1 is what any box of that size gets by chance.",
    ),
    (
        "|Δp|",
        ("δp", "|δp|", "dp"),
        "how far a predicted probability moves, in absolute value, when something is"
        " removed or erased (0.1 = ten percentage points).",
    ),
    (
        "paired bootstrap",
        ("paired_bootstrap", "paired", "bootstrap"),
        "the two reports' metrics are resampled on the same patients together, so the CI"
        " of their difference reflects only what changed between the models (mmaudit diff).",
    ),
    (
        "mmaudit diff",
        ("diff", "re-audit"),
        "re-audit: run mmaudit again on the retrained model; `mmaudit diff OLD NEW` then"
        " shows which findings were resolved and which metrics moved significantly.",
    ),
]
