"""The parameters of the ``saliency`` check and the names of its saliency methods: what a
config may set, with the defaults and limits the YAML is validated against."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["gradcam", "hirescam", "layercam", "ig", "occlusion"]
#: the class-activation-map methods: one forward and one backward per batch, on a hooked layer
CAMS = ("gradcam", "hirescam", "layercam")


class SaliencyParams(BaseModel):
    """The parameters of the ``saliency`` check (``checks.saliency.params`` in the YAML).

    ``SaliencyCheck.Params`` is this model under the name the config errors and the
    ``mmaudit checks`` listing use; the stages type their parameters with it."""

    model_config = ConfigDict(extra="forbid")
    methods: list[Method] = Field(
        default=["gradcam", "hirescam", "layercam", "ig"],
        description="saliency methods (ig and occlusion run on params.subset_samples)",
    )
    target: Literal["predicted", "positive", "label"] = Field(
        default="predicted", description="class explained per sample"
    )
    target_class: int = Field(
        default=0, ge=0, description="label column explained for multilabel targets"
    )
    layer: str | None = Field(
        default=None, description="CAM layer (default: model.layers.gradcam / detected)"
    )
    layercam_layer: str = Field(
        default="auto",
        description="LayerCAM layer: auto (a finer earlier conv), same, or a dotted path",
    )
    ig_baseline: Literal["black", "blurred", "mean"] = Field(
        default="blurred", description="Integrated Gradients baseline image"
    )
    ig_steps: int = Field(default=16, ge=2, description="IG integration steps")
    ig_steps_per_pass: int = Field(
        default=8, ge=1, description="IG steps per forward/backward (memory vs speed)"
    )
    subset_samples: int = Field(
        default=48, ge=0, description="images given IG / occlusion maps (0: all images)"
    )
    blur_sigma: float = Field(
        default=4.0, gt=0, description="blur (px at model size) of blurred baselines"
    )
    occlusion_window: float = Field(
        default=0.125, gt=0, lt=1, description="occlusion-map window, fraction of the side"
    )
    border: float = Field(
        default=0.1, gt=0, lt=0.5, description="border band width, fraction of the side"
    )
    map_size: int = Field(
        default=32, ge=8, description="side of map thumbnails (mean map, null, clusters)"
    )
    hotspot_method: str = Field(
        default="auto",
        description="method proposing hotspots (auto: every method passing the sanity check)",
    )
    hotspot_size: float = Field(
        default=0.15, gt=0, lt=1, description="hotspot / control box side, fraction"
    )
    hotspot_peaks: int = Field(
        default=3, ge=1, le=5, description="candidate hotspot boxes per method (peaks)"
    )
    hotspot_max: int = Field(
        default=6, ge=1, description="candidate hotspot boxes tested at most (Holm family)"
    )
    roi_margin: float = Field(
        default=0.05, ge=0, lt=0.5, description="gap kept between hotspot boxes and the ROI"
    )
    hotspot_samples: int = Field(
        default=1000,
        ge=0,
        description="image rows the hotspot occlusion test fills, a seeded subset stratified"
        " by label and site (0: all); a fixed cost at any N (2 x candidates forwards a row)",
    )
    control_draws: int = Field(
        default=8, ge=1, description="random control boxes per image; the closest change wins"
    )
    hotspot_null: int = Field(default=200, ge=20, description="shifted-map null draws")
    infill: Literal["linear", "donor"] = Field(
        default="linear", description="fill of an occluded box: linear in-painting or donor"
    )
    infill_noise: float = Field(
        default=1.0, ge=0, description="noise of linear in-painting, x the ring's std"
    )
    n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples for CIs")
    n_permutations: int = Field(
        default=2000,
        ge=50,
        description="permutations of the subgroup-gap null (Holm runs over attributes x"
        " methods per statistic, so the smallest p is about 12 / n_permutations)",
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
    clusters_max: int = Field(default=8, ge=2, description="largest cluster count tried")
    cluster_samples: int = Field(
        default=1000, ge=10, description="maps clustered at most (a seeded subset)"
    )
    faithfulness_samples: int = Field(
        default=24, ge=0, description="deletion/insertion subset (0: skip)"
    )
    faithfulness_steps: int = Field(default=6, ge=2, description="deletion/insertion fractions")
    sanity: bool = Field(default=True, description="run the model-randomisation test")
    sanity_samples: int = Field(default=32, ge=4, description="cascade subset size")
    sanity_stages: Annotated[int, Field(ge=1)] | Literal["all"] = Field(
        default=4,
        description="cascade stages, top first (all: one parametrised layer per stage)",
    )
    scan: bool = Field(
        default=True,
        description="grid scan of the off-ROI area (the border band without masks): fill"
        " every box and compare with matched random off-ROI boxes, maps or no maps",
    )
    scan_samples: int = Field(
        default=200,
        ge=0,
        description="image rows the scan fills, a seeded subset stratified by label and site"
        " (0: all); a fixed cost at any N",
    )
    scan_sizes: list[Annotated[float, Field(gt=0, le=4)]] = Field(
        default=[0.5, 1.0, 1.5],
        min_length=1,
        description="scan box sides, multiples of hotspot_size",
    )
    scan_stride: float = Field(
        default=0.5, gt=0, le=1, description="scan grid step, fraction of the box side"
    )
    scan_max_boxes: int = Field(
        default=100,
        ge=1,
        description="scan boxes at most (the step of the smallest sizes widens to fit):"
        " the Holm family, and the cost (forward passes = rows x (boxes + controls))",
    )
    scan_control_draws: int = Field(
        default=4, ge=1, description="random off-ROI control boxes per image and box size"
    )
    content_gate: bool = Field(
        default=True,
        description="a use rule (hotspot_used, scan_used) fails only when the flagged box's"
        " content (pixel mean / std per study) differs by label or an audited attribute;"
        " otherwise a note says the model relies on it (likely anatomy). false: fail on any"
        " use",
    )
    content_max_p: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="content gate: Holm p (over every test of the flagged boxes) at most this",
    )
    content_min_auroc_gap: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="content gate: effect floor for a label / categorical attribute,"
        " |AUROC - 0.5| of a level against the rest at least this",
    )
    content_min_rho: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="content gate: effect floor for a continuous attribute, |Spearman rho|"
        " at least this",
    )
