"""Check ``ablation``: analytic models with known contributions, a clean counterpart, bad
input, and the planted structure of the bundled sample.

The analytic models read one number per modality (the mean image intensity, a mean text
embedding, the first lab) so every contribution is known in closed form:
``additive``: logit = a * f(image) + b * g(labs), the text encoder runs but is unused;
``xor``: logit = 3 * f(image) * g(labs) with label = [f * g > 0] (pure synergy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mmaudit.checks.ablation.check import AblationCheck
from mmaudit.checks.ablation.scoring import METRICS, Scorer, predicted_probs
from mmaudit.checks.contract import AuditContext
from mmaudit.checks.findings import count_judged, exemption_notes, judge
from mmaudit.methods.stats import auroc, paired_bootstrap_diff
from mmaudit.report.document import json_safe

TESTS = Path(__file__).parent  # the factories below are imported from here
ROOT = TESTS.parents[1]
N = 120
A, B = 2.0, 1.0
N_BOOT = 200
TEXT_MISSING = 12  # rows without a report; all positive, so that pattern has one class
REPORTS = (
    "patchy opacity in the right lower lobe",
    "lungs are clear",
    "no acute cardiopulmonary process",
    "focal consolidation in the left upper lobe",
)


# --------------------------------------------------------------------------- models


class ImageMean(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.mean(dim=(1, 2, 3))[:, None]


class TextMean(nn.Module):
    def __init__(self, vocab: int = 400) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.float()
        return (self.emb(input_ids)[..., 0] * mask).sum(1, keepdim=True) / mask.sum(
            1, keepdim=True
        ).clamp(min=1)


class FirstLab(nn.Module):
    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        return tabular[:, :1]


class Analytic(nn.Module):
    """Image + report + labs -> one logit whose dependence on each modality is known."""

    def __init__(self, form: str = "additive", a: float = A, b: float = B) -> None:
        super().__init__()
        self.form, self.a, self.b = form, a, b
        self.image_enc = ImageMean()
        self.text_enc = TextMean()
        self.tab_enc = FirstLab()

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
    ) -> torch.Tensor:
        f = self.image_enc(image)
        t = self.text_enc(input_ids, attention_mask) if input_ids is not None else 0.0 * f
        g = self.tab_enc(tabular) if tabular is not None else 0.0 * f
        if self.form == "xor":
            return 3.0 * f * g + 0.0 * t
        if self.form == "three":  # three classes, text unused
            return torch.cat([self.a * f, self.b * g, -f - g], dim=1) + 0.0 * t
        return self.a * f + 0.0 * t + self.b * g


class ReadsPresence(Analytic):
    """Additive, plus terms read from the presence mask: ``report_bonus`` when the report is
    present (a model that uses the mask) and ``missing_image_bonus`` when the image is
    missing (a planted bug that only shows when images go missing)."""

    def __init__(
        self, a: float, b: float, report_bonus: float = 0.0, missing_image_bonus: float = 0.0
    ) -> None:
        super().__init__("additive", a, b)
        self.report_bonus, self.missing_image_bonus = report_bonus, missing_image_bonus

    def forward(  # type: ignore[override]
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = super().forward(image, input_ids, attention_mask, tabular)
        if present is None:
            return out
        image_missing = (~present[:, 0:1].bool()).float()
        return (
            out
            + self.report_bonus * present[:, 1:2].float()
            + self.missing_image_bonus * image_missing
        )


class LateSpec:
    """What the ablation check reads of a built-in model's spec: its fusion kind."""

    fusion = "late"


def build_analytic(form: str = "additive", a: float = A, b: float = B) -> Analytic:
    """The factory the configs name as ``test_ablation:build_analytic``; ``late`` is the
    additive model declaring late fusion (additive by design)."""
    torch.manual_seed(0)
    if form == "presence":
        return ReadsPresence(a, b, report_bonus=1.0)
    if form == "broken_missing":
        return ReadsPresence(a, b, missing_image_bonus=6.0)
    model = Analytic("additive" if form == "late" else form, a, b)
    if form == "late":
        model.spec = LateSpec()  # type: ignore[assignment]
    return model


LAYERS = {"image": "image_enc", "text": "text_enc", "tabular": "tab_enc"}


def build_attention(fusion: str = "attention") -> nn.Module:
    """A small built-in model with attention fusion, whose text queries are masked with the
    attention mask in the fusion, after the text encoder: a fusion that reads an input.
    ``fusion="concat"`` gives the same encoders concatenated into one linear head."""
    from mmaudit.engine.models import (
        ArchitectureSpec,
        TabularSpec,
        TextSpec,
        build_model,
        tiny_image_spec,
    )

    text = TextSpec(vocab_size=351, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    spec = ArchitectureSpec(
        modalities=["image", "text", "tabular"],
        image=tiny_image_spec(8),
        text=text,
        tabular=TabularSpec(n_features=2, hidden=[8]),
        dim=16,
        fusion=fusion,
        num_outputs=1,
    )
    torch.manual_seed(0)
    return build_model(spec).eval()


BUILTIN_LAYERS = {"image": "image_encoder", "text": "text_encoder", "tabular": "tabular_encoder"}


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def analytic_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8x8 constant images whose normalised value is u; lab_a = a permutation of u."""
    folder = tmp_path_factory.mktemp("ablation")
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    magnitude = rng.uniform(0.25, 2.0, N)
    pixel = np.rint(255 * ((np.where(rng.random(N) < 0.5, -1, 1) * magnitude) / 4 + 0.5))
    u = (pixel / 255 - 0.5) / 0.25  # exactly what the loader's normalisation gives back
    v = u[rng.permutation(N)]
    for i in range(N):
        Image.fromarray(np.full((8, 8), pixel[i], dtype=np.uint8)).save(
            folder / "images" / f"s{i}.png"
        )
    reports: list[str | None] = [str(rng.choice(REPORTS)) for _ in range(N)]
    for i in range(TEXT_MISSING):
        reports[i] = None
    y_add = (A * u + B * v + rng.normal(0, 1.0, N) > 0).astype(int)
    y_add[:TEXT_MISSING] = 1
    base = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(N)],
            "patient": [f"p{i // 2}" for i in range(N)],
            "image_path": [f"images/s{i}.png" for i in range(N)],
            "report": reports,
            "lab_a": v,
            "lab_b": rng.normal(size=N),
        }
    )
    paths = {}
    three = np.stack([A * u, B * v, -u - v], 1) + rng.normal(0, 0.5, (N, 3))
    y_dup = (u + rng.normal(0, 0.7, N) > 0).astype(int)
    y_random = rng.integers(0, 2, N)
    for name, label, report in (
        ("additive", y_add, base["report"]),
        ("xor", (u * v > 0).astype(int), base["report"]),
        ("notext", y_add, [None] * N),
        ("three", three.argmax(1), base["report"]),
        ("random", y_random, base["report"]),
    ):
        frame = base.assign(label=label, report=report)
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    # labs that carry exactly the image's signal (lab_a = u): either alone suffices
    paths["dup"] = folder / "dup.csv"
    base.assign(label=y_dup, lab_a=u).to_csv(paths["dup"], index=False)
    # labs off-centre (mean far from 0) with a few missing values, for 'mean' removal
    shifted = v + 1.5
    shifted[[3, 17, 40]] = np.nan
    paths["shifted"] = folder / "shifted.csv"
    base.assign(label=y_add, lab_a=shifted).to_csv(paths["shifted"], index=False)
    return paths


def analytic_config(
    manifest: Path,
    form: str = "additive",
    modalities: tuple[str, ...] = ("image", "text", "tabular"),
    layers: dict[str, str] | None = None,
    checks: dict[str, Any] | None = None,
    weights: tuple[float, float] = (A, B),
) -> dict[str, Any]:
    target = {"column": "label", "kind": "multiclass"} if form == "three" else {"column": "label"}
    data: dict[str, Any] = {
        "manifest": str(manifest),
        "id": "id",
        "patient": "patient",
        "target": target,
    }
    if "image" in modalities:
        data["image"] = {"column": "image_path", "size": 8, "channels": 1}
    if "text" in modalities:
        data["text"] = {
            "column": "report",
            "tokenizer": str(ROOT / "sample_data" / "tokenizer"),
            "max_length": 16,
        }
    if "tabular" in modalities:
        data["tabular"] = {"columns": ["lab_a", "lab_b"], "normalization": "none"}
    return {
        "model": {
            "factory": "test_ablation:build_analytic",
            "kwargs": {"form": form, "a": weights[0], "b": weights[1]},
            "python_path": [str(TESTS)],
            "layers": LAYERS if layers is None else layers,
        },
        "data": data,
        "checks": checks or {"ablation": {"params": {"n_boot": N_BOOT}}},
        "runtime": {"device": "cpu", "batch_size": 32, "progress": False},
    }


def make_context(cfg_dict: dict[str, Any]) -> AuditContext:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = AuditConfig.model_validate(cfg_dict)
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=cfg.runtime.batch_size, seed=0)
    cache.request_layers([m for m in ds.modalities if m in adapter.layers])
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


def run_check(ctx: AuditContext, **params: Any) -> Any:
    import matplotlib.pyplot as plt

    check = AblationCheck(AblationCheck.Params(**{"n_boot": N_BOOT, **params}))
    assert check.missing_requirements(ctx) is None
    out = check.run(ctx)
    assert set(out.figures) == {"contributions", "coalitions", "robustness", "sample_shares"}
    # the coalition cells' numbers read on their colour: white on the darkest red / green
    # (no modality kept is the worst row), black on the pale middle
    (ax,) = out.figures["coalitions"].axes
    colours = {t.get_color() for t in ax.texts}
    assert colours <= {"black", "white"} and "white" in colours
    for fig in out.figures.values():
        plt.close(fig)
    return out


def value(metrics: dict[str, Any], name: str) -> Any:
    return json_safe(metrics)[name]["value"]


@pytest.fixture(scope="session")
def additive_ctx(analytic_data: dict[str, Path]) -> AuditContext:
    return make_context(analytic_config(analytic_data["additive"]))


@pytest.fixture(scope="session")
def additive_out(additive_ctx: AuditContext) -> Any:
    return run_check(additive_ctx, robustness_strategy="permute", emap_partners=24)


# ---------------------------------------------------------------------------- scoring


def test_scorer_matches_sklearn_on_ties_and_every_target_kind() -> None:
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        f1_score,
        log_loss,
        roc_auc_score,
    )

    from mmaudit.methods.stats import expected_calibration_error, multiclass_ece

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    p = np.round(rng.random((4, 50)), 1)  # many ties
    table = Scorer(y, "binary").table(p)
    for c in range(4):
        pred = p[c] >= 0.5
        expected = [
            roc_auc_score(y, p[c]),
            average_precision_score(y, p[c]),
            np.mean(pred == y),
            balanced_accuracy_score(y, pred),
            f1_score(y, pred),
            log_loss(y, p[c]),
            expected_calibration_error(y, p[c]),
        ]
        assert np.allclose(table[c], expected)
    yk = rng.integers(0, 3, 60)
    pk = rng.dirichlet(np.ones(3), size=(2, 60))
    tk = Scorer(yk, "multiclass").table(pk)
    assert tk[0, METRICS.index("auroc")] == pytest.approx(
        roc_auc_score(yk, pk[0], multi_class="ovr", average="macro")
    )
    assert tk[0, METRICS.index("f1")] == pytest.approx(
        f1_score(yk, pk[0].argmax(1), average="macro")
    )
    assert tk[0, METRICS.index("log_loss")] == pytest.approx(log_loss(yk, pk[0]))
    assert tk[0, METRICS.index("ece")] == pytest.approx(multiclass_ece(yk, pk[0]))
    one_class = Scorer(np.ones(5, dtype=int), "binary").table(rng.random((1, 5)))
    assert np.isnan(one_class[0, METRICS.index("auroc")])  # undefined, not an exception


# ------------------------------------------------------------------- analytic truths


def test_unused_text_gets_nothing_and_the_others_their_analytic_share(
    additive_ctx: AuditContext, additive_out: Any
) -> None:
    m = additive_out.metrics
    assert value(m, "shapley.text") == 0.0 and value(m, "share.text") == 0.0
    assert value(m, "logit_share.text") == 0.0
    assert json_safe(m)["drop.loo.text"] == {**json_safe(m)["drop.loo.text"], "ci_high": 0.0}
    assert value(m, "shapley.image") > value(m, "shapley.tabular") > 0.02
    assert value(m, "share.image") + value(m, "share.tabular") == pytest.approx(1.0)
    assert m["logit_shapley.efficiency_error"] < 1e-5
    per = additive_out.per_sample
    total = per[["shapley.image", "shapley.text", "shapley.tabular"]].sum(axis=1)
    assert np.allclose(total, per["output_full"] - per["output_empty"], atol=1e-5)
    # interaction: none per sample (float rounding is reported as exactly 0, CI included);
    # the additive projection is the model itself
    for pair in ("image_x_text", "image_x_tabular", "text_x_tabular"):
        est = json_safe(m)[f"logit_interaction.{pair}"]
        assert (est["value"], est["ci_low"], est["ci_high"]) == (0.0, 0.0, 0.0), pair
    assert value(m, "emap.gap") == pytest.approx(0.0, abs=1e-9)
    assert value(m, "emap.auroc") == pytest.approx(value(m, "full.auroc"))
    findings = judge("ablation", m, AblationCheck.default_thresholds)
    assert [f.metric for f in findings if f.rule == "modality_ignored"] == ["drop.loo.text"]
    # a head that could express an interaction but learned none: judged (warns), with a
    # note beside it saying the interactions are 0 numerically
    assert additive_out.exempt_rules == {}
    assert "no_interaction" in {f.rule for f in findings}
    (note,) = [f for f in additive_out.findings if f.rule == "no_interaction"]
    assert note.severity == "note" and note.detail.startswith("numerically additive")
    assert "every per-sample interaction between modalities is 0" in note.message
    assert additive_ctx.adapter.hook_count() == 0
    assert isinstance(additive_ctx.adapter.module.image_enc, ImageMean)  # substitution undone


def test_logit_shapley_is_in_proportion_to_the_weights(additive_ctx: AuditContext) -> None:
    """Zeroing at the encoder output: phi_image(i) = a * u_i, phi_labs(i) = b * v_i, and v is
    a permutation of u, so mean |phi| is in the ratio a : b exactly."""
    out = run_check(additive_ctx, strategy="zero", emap=False)
    m = out.metrics
    assert m["logit_shapley.image"] / m["logit_shapley.tabular"] == pytest.approx(A / B, rel=1e-4)
    assert m["logit_shapley.text"] == 0.0
    assert out.per_sample["shapley.image"].to_numpy() == pytest.approx(
        A * additive_ctx.cache.embeddings("image")[:, 0], abs=1e-5
    )


def test_drops_are_the_paired_bootstrap_of_stats(
    additive_ctx: AuditContext, additive_out: Any
) -> None:
    full = predicted_probs(additive_ctx.cache.sweep().logits, "binary")
    loo = predicted_probs(
        additive_ctx.cache.ablated({"image": "permute"}, "encoder").logits, "binary"
    )
    y = additive_ctx.target
    expected = paired_bootstrap_diff(
        auroc, (y, loo), (y, full), groups=additive_ctx.groups, n_boot=N_BOOT, seed=0
    )
    got = additive_out.metrics["loo.image.auroc_drop"]
    assert got.value == pytest.approx(expected.value)
    assert (got.ci_low, got.ci_high) == pytest.approx((expected.ci_low, expected.ci_high))
    assert got.null_p >= expected.null_p  # Holm-adjusted over the three modalities


def test_robustness_curve_runs_from_the_full_model_to_leave_one_out(additive_out: Any) -> None:
    curves = additive_out.tables["robustness"]
    m = json_safe(additive_out.metrics)
    for mod in ("image", "tabular"):
        c = curves[curves["modality"] == mod].sort_values("drop_rate")
        assert c["auroc"].iloc[0] == pytest.approx(m["full.auroc"]["value"])
        assert c["auroc"].iloc[-1] == pytest.approx(m[f"loo.{mod}.auroc"]["value"])
    assert m["robustness.image.realistic_drop"]["value"] > 0.01
    assert m["robustness.text.realistic_drop"]["value"] == pytest.approx(0.0, abs=1e-12)


def test_xor_model_shows_synergy_and_a_large_emap_gap(analytic_data: dict[str, Path]) -> None:
    ctx = make_context(analytic_config(analytic_data["xor"], form="xor"))
    out = run_check(ctx, emap_partners=len(ctx.dataset))
    m = out.metrics
    inter = m["interaction.image_x_tabular"]
    assert inter.value > 0.3 and inter.ci_low > 0
    assert m["full.auroc"].value == pytest.approx(1.0)
    assert m["emap.gap"].value > 0.3 and m["emap.gap"].ci_low > 0.2
    assert m["redundancy.image_x_tabular"].value < 0.2
    rules = {f.rule for f in judge("ablation", m, AblationCheck.default_thresholds)}
    assert "no_interaction" not in rules and "redundant_pair" not in rules
    # a model with a real interaction is judged by no_interaction (and passes), not exempt
    assert out.exempt_rules == {}
    only = {"no_interaction": AblationCheck.default_thresholds["no_interaction"]}
    assert count_judged(m, only, out.exempt_rules) == 1


def test_input_level_gives_the_encoder_level_numbers(
    analytic_data: dict[str, Path], additive_out: Any
) -> None:
    ctx = make_context(analytic_config(analytic_data["additive"]))
    out = run_check(ctx, level="input", robustness_strategy="permute", emap_partners_input=24)
    assert out.metrics["level"] == "input"
    enc, inp = additive_out.tables["coalitions"], out.tables["coalitions"]
    assert np.allclose(enc[list(METRICS)], inp[list(METRICS)], atol=1e-6)
    for k in METRICS:
        assert out.metrics[f"emap.{k}"].value == pytest.approx(
            additive_out.metrics[f"emap.{k}"].value, abs=1e-6
        )


def test_presence_flags_travel_with_a_permuted_modality_at_both_levels(
    analytic_data: dict[str, Path],
) -> None:
    ctx = make_context(analytic_config(analytic_data["additive"], form="presence"))
    assert "present" in ctx.adapter.keywords
    full = ctx.cache.sweep().logits
    for how in ("permute", "missing"):
        at_input = ctx.cache.ablated({"text": how}, "input").logits
        at_encoder = ctx.cache.ablated({"text": how}, "encoder").logits
        assert np.allclose(at_input, at_encoder, atol=1e-6), how
    has_text = ctx.dataset.present[:, 1]
    missing = ctx.cache.ablated({"text": "missing"}, "encoder").logits
    assert np.allclose((full - missing)[:, 0], has_text.astype(float), atol=1e-6)
    out = run_check(ctx, strategy="missing", emap_partners=16)
    assert out.metrics["strategy"] == "missing"
    assert out.metrics["shapley.text"].value != 0.0  # presence alone carries signal here


def test_without_encoder_layers_it_falls_back_to_the_input_and_says_so(
    analytic_data: dict[str, Path],
) -> None:
    cfg = analytic_config(analytic_data["additive"], layers={"image": "image_enc"})
    ctx = make_context(cfg)
    out = run_check(ctx, strategy="missing", emap=False, robustness_steps=3)
    assert out.metrics["level"] == "input"
    assert any("ran at the input" in n and "text, tabular" in n for n in out.notes)
    assert out.metrics["strategy"] == "permute"  # the model takes no presence mask
    assert any("strategy 'missing'" in n for n in out.notes)


# -------------------------------------------------------------- findings that fire


def rules_of(metrics: dict[str, Any]) -> dict[str, list[str]]:
    """Rule -> the metrics it fired on, under the default thresholds."""
    fired: dict[str, list[str]] = {}
    for f in judge("ablation", metrics, AblationCheck.default_thresholds):
        fired.setdefault(f.rule, []).append(f.metric or "")
    return fired


def test_duplicated_labs_are_redundant_with_default_params(
    analytic_data: dict[str, Path], additive_out: Any
) -> None:
    """lab_a = u, the image's own value: removing either changes nothing, removing both
    everything. Under the default 'permute' the permuted image is a competing signal, so
    redundancy is computed from the neutral (dataset-mean) game."""
    ctx = make_context(analytic_config(analytic_data["dup"]))
    out = run_check(ctx, emap_partners=8, robustness_steps=3)
    m = out.metrics
    assert m["strategy"] == "permute"
    assert m["redundancy.image_x_tabular"].value == pytest.approx(1.0, abs=1e-6)
    assert rules_of(m)["redundant_pair"] == ["redundancy.image_x_tabular"]
    assert any(
        "redundancy.* is computed with the modalities removed as 'mean'" in n for n in out.notes
    )
    # the clean counterpart: independent labs in the additive a=2, b=1 model
    assert additive_out.metrics["redundancy.image_x_tabular"].value < 0.9
    assert "redundant_pair" not in rules_of(additive_out.metrics)


def test_dominating_image_and_broken_missing_path_fire_and_balanced_does_not(
    analytic_data: dict[str, Path],
) -> None:
    """Default params throughout. a=8, b=0.05: the image carries ~everything. A model whose
    missing-image path adds 6 to the logit: a sharp drop at 20 % missing images. The
    additive a=2, b=1 model (image share ~0.88, CI reaching below 0.8; mean-imputed images
    cost ~0.03 AUROC at 20 %) raises neither."""
    fired = {}
    for name, form, weights in (
        ("dominant", "additive", (8.0, 0.05)),
        ("broken", "broken_missing", (A, B)),
        ("balanced", "additive", (A, B)),
    ):
        ctx = make_context(analytic_config(analytic_data["additive"], form, weights=weights))
        out = run_check(ctx, emap=False, robustness_steps=3)
        fired[name] = rules_of(out.metrics)
        if name == "dominant":
            assert out.metrics["share.image"].ci_low > 0.8
        if name == "broken":
            assert out.metrics["robustness.image.realistic_drop"].value > 0.05
    assert fired["dominant"]["one_modality_dominates"] == ["share.image"]
    assert fired["broken"]["missing_modality_drop"] == ["robustness.image.realistic_drop"]
    assert "missing_modality_drop" not in fired["dominant"]
    assert "one_modality_dominates" not in fired["broken"]
    assert "one_modality_dominates" not in fired["balanced"]
    assert "missing_modality_drop" not in fired["balanced"]


def test_shares_of_a_total_indistinguishable_from_zero_are_undefined(
    analytic_data: dict[str, Path],
) -> None:
    ctx = make_context(analytic_config(analytic_data["random"]))
    out = run_check(ctx, emap=False, robustness_steps=3)
    m = out.metrics
    total = m["shapley.total"]
    assert total.ci_low <= 0 <= total.ci_high
    assert all(np.isnan(m[f"share.{k}"].value) for k in ("image", "text", "tabular"))
    assert any(n.startswith("shares undefined") for n in out.notes)
    assert "one_modality_dominates" not in rules_of(m)
    json.dumps(json_safe(m), allow_nan=False)


def test_late_fusion_gap_is_a_note_not_a_warning(analytic_data: dict[str, Path]) -> None:
    ctx = make_context(analytic_config(analytic_data["additive"], form="late"))
    out = run_check(ctx, emap_partners=8, robustness_steps=3)
    assert "emap.gap" not in out.metrics
    assert out.metrics["emap.late_fusion_gap"].value == pytest.approx(0.0, abs=1e-9)
    assert "no_interaction" not in rules_of(out.metrics)
    (note,) = [f for f in out.findings if f.rule == "no_interaction"]
    assert note.severity == "note" and "late fusion" in note.message


@pytest.mark.parametrize("fusion", ["concat", "projection", "attention"])
def test_concat_with_a_linear_head_is_called_additive_by_construction(
    analytic_data: dict[str, Path], fusion: str
) -> None:
    """Known answer: a built-in concat fusion feeding one nn.Linear is a sum of one term per
    encoder, so every per-sample logit interaction is float rounding, reported as exactly 0,
    and the no_interaction rule cannot apply: it is exempt (no warning), and the runner's
    note says why, with the EMAP gap as evidence. Projection fusion (the mean of the present
    modalities) is additive where the same modalities are present: judged, with a note. The
    counterpart, the same encoders under attention fusion, interacts: judged, no note, no
    exemption."""
    cfg = analytic_config(analytic_data["additive"])
    cfg["model"].update(
        factory="test_ablation:build_attention", kwargs={"fusion": fusion}, layers=BUILTIN_LAYERS
    )
    ctx = make_context(cfg)
    out = run_check(ctx, emap_partners=8, robustness_steps=3)
    m = json_safe(out.metrics)
    notes = [f for f in out.findings if f.rule == "no_interaction"]
    inter = [m[f"logit_interaction.{k}"] for k in ("image_x_text", "image_x_tabular")]
    if fusion == "concat":
        assert all((e["value"], e["ci_low"], e["ci_high"]) == (0.0, 0.0, 0.0) for e in inter)
        assert m["emap.gap"]["value"] == pytest.approx(0.0, abs=1e-9)
        assert notes == []
        rules = AblationCheck.default_thresholds
        reason = out.exempt_rules["no_interaction"]
        assert "concat fusion feeding one linear head" in reason
        assert "can only add up its inputs" in reason
        judged = judge("ablation", out.metrics, rules, out.exempt_rules)
        assert [f for f in judged if f.rule == "no_interaction"] == []
        assert count_judged(out.metrics, rules, out.exempt_rules) < count_judged(out.metrics, rules)
        (note,) = exemption_notes("ablation", out.exempt_rules, out.metrics, rules)
        assert (note.severity, note.rule, note.metric) == ("note", "no_interaction", "emap.gap")
        assert note.message == reason and note.evidence.startswith("EMAP gap = 0 (CI 0 to 0)")
        assert note.evidence.endswith("not judged") and "fusion" in note.next_step
    elif fusion == "projection":
        # every modality present in these data: the mean of the embeddings is additive
        (note,) = notes
        assert note.detail.startswith("additive by construction wherever the same modalities")
        assert "projection fusion" in note.detail and "averages its inputs" in note.message
        assert out.exempt_rules == {}
    else:
        assert all(e["ci_low"] > 1e-4 for e in inter), inter
        assert notes == [] and out.exempt_rules == {}


def test_keep_one_in_and_leave_one_out_say_how_the_others_were_removed(
    additive_ctx: AuditContext,
) -> None:
    """Under 'permute' the "kept alone" coalition still has the other modalities, another
    patient's: titles and tables say so, and a note sets drop.loo (permuted) beside the
    robustness curve at 100 % (here the dataset mean), with the numbers of both."""
    out = run_check(additive_ctx, emap=False, robustness_steps=3, robustness_strategy="mean")
    m = out.metrics
    for name in ("coalitions", "contributions", "metrics"):
        assert set(out.tables[name]["removal"]) == {
            "permute: removed modalities shuffled across patients"
        }, name
    contributions = out.figures["contributions"]
    titles = [ax.get_title() for ax in contributions.axes]
    assert any("only this modality kept" in t and "shuffled across patients" in t for t in titles)
    assert any("not attribution's shares" in t for t in titles)
    assert any(
        n.startswith("share.<m> is each modality's Shapley share of auroc") for n in out.notes
    )
    (costs,) = [n for n in out.notes if n.startswith("removing a modality costs auroc")]
    curves = out.tables["robustness"]
    for mod in ("image", "tabular"):
        end = curves[(curves["modality"] == mod) & (curves["drop_rate"] == 1.0)]["auroc"].item()
        expected = f"{mod} {m[f'drop.loo.{mod}'].value:.3f} (permute) vs"
        expected += f" {m['full.auroc'].value - end:.3f} (mean)"
        assert expected in costs
    assert "text 0.000 (permute) vs 0.000 (mean)" in costs  # the unused report, both ways


# ---------------------------------------------------------------- removal strategies


def test_input_mean_of_labs_is_the_audited_mean_whatever_the_normalisation(
    analytic_data: dict[str, Path],
) -> None:
    """normalization none, lab_a centred at 1.5 with 3 values missing: 'mean' at the input
    gives a * f + b * mean(lab_a over the rows that have it)."""
    ctx = make_context(analytic_config(analytic_data["shifted"]))
    lab = pd.read_csv(analytic_data["shifted"])["lab_a"]
    f = ctx.cache.embeddings("image")[:, 0]
    got = ctx.cache.ablated({"tabular": "mean"}, "input").logits[:, 0]
    assert abs(lab.mean()) > 1.0
    assert got == pytest.approx(A * f + B * lab.mean(), abs=1e-5)
    out = run_check(ctx, strategy="mean", level="input", emap=False, robustness_steps=3)
    assert any(
        "'mean' removal of the report at the input is the empty report" in n for n in out.notes
    )
    assert out.metrics["shapley.text"].value == 0.0
    assert out.metrics["shapley.image"].value > out.metrics["shapley.tabular"].value > 0


def test_encoder_mean_averages_present_rows_only(additive_ctx: AuditContext) -> None:
    has = additive_ctx.dataset.present[:, 1]
    assert not has.all()
    emb = additive_ctx.cache.embeddings("text")
    assert additive_ctx.cache.encoder_mean("text").numpy()[0] == pytest.approx(
        emb[has].mean(0), abs=1e-6
    )
    out = run_check(additive_ctx, strategy="mean", emap=False, robustness_steps=3)
    assert out.metrics["shapley.text"].value == 0.0
    assert out.metrics["logit_shapley.efficiency_error"] < 1e-5


@pytest.mark.parametrize("model", ["analytic", "attention"])
def test_encoder_level_coalitions_decode_no_image(
    analytic_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """Every coalition at the encoder level in one pass: no image read, and the logits of
    the input level (where the whole model reruns on the removed inputs). The attention
    fusion masks its text queries with the attention mask, so a permuted text encoder
    output must bring its donor's mask along; only 'permute' is comparable there (a zeroed
    encoder output is not the encoder's output on a zeroed input)."""
    from mmaudit.checks.ablation.coalitions import coalition_removals

    cfg = analytic_config(analytic_data["additive"])
    hows: tuple[str, ...] = ("permute", "mean", "zero")
    masks = np.arange(8)
    if model == "attention":
        cfg["model"].update(
            factory="test_ablation:build_attention", kwargs={}, layers=BUILTIN_LAYERS
        )
        hows = ("permute",)
        masks = np.array([5, 1, 0])  # removed: text alone, text and labs, everything
    ctx = make_context(cfg)
    ctx.cache.sweep()
    loads = {"n": 0}
    real = ctx.dataset.load_image

    def counted(i: int) -> torch.Tensor:
        loads["n"] += 1
        return real(i)

    monkeypatch.setattr(ctx.dataset, "load_image", counted)
    players = list(ctx.dataset.modalities)
    for how in hows:
        removals = coalition_removals(players, masks, how)
        loads["n"] = 0
        enc = ctx.cache.ablated_many(removals, "encoder")
        assert loads["n"] == 0, how
        for remove, result in zip(removals, enc, strict=True):
            if how == "mean" and "text" in remove:
                continue  # text 'mean': mean embedding vs the empty report's, not comparable
            expected = ctx.cache.ablated(remove, "input").logits
            assert np.allclose(result.logits, expected, atol=1e-5), (how, remove)
    if model == "attention":  # the analytic model ignores its text; this one does not
        text_moved = ctx.cache.ablated({"text": "permute"}, "encoder").logits
        assert not np.allclose(text_moved, ctx.cache.sweep().logits, atol=1e-3)


def test_encoder_level_removal_without_an_encoder_layer_is_an_error(
    analytic_data: dict[str, Path],
) -> None:
    """No encoder output to replace: the model would run on the real report and return
    near-base logits. Only 'missing' (a presence flag) needs no encoder layer."""
    from mmaudit.engine.errors import CheckError

    cfg = analytic_config(analytic_data["additive"], layers={"image": "image_enc"})
    ctx = make_context(cfg)
    for how in ("permute", "zero", "mean"):
        with pytest.raises(CheckError, match="text, tabular"):
            ctx.cache.ablated({"text": how, "tabular": how, "image": how}, "encoder")  # type: ignore[dict-item]
    with pytest.raises(CheckError, match="tabular"):
        ctx.cache.ablated({"image": "permute", "tabular": "zero"}, "encoder")
    kept = ctx.cache.ablated({"image": "permute", "text": "missing"}, "encoder").logits
    assert np.allclose(kept, ctx.cache.ablated({"image": "permute"}, "input").logits, atol=1e-5)


def test_per_sample_values_average_several_permutations(additive_ctx: AuditContext) -> None:
    """Additive model: phi_image(i) = a * (u_i - mean over donors of u); more donors bring it
    closer to a * (u_i - mean u)."""
    u = additive_ctx.cache.embeddings("image")[:, 0]
    target = A * (u - u.mean())
    errors = {}
    for k in (1, 8):
        out = run_check(additive_ctx, emap=False, robustness_steps=3, logit_permutations=k)
        assert out.metrics["logit_shapley.efficiency_error"] < 1e-5
        assert any(f"average {k} permutation" in n for n in out.notes)
        phi = out.per_sample["shapley.image"].to_numpy()
        errors[k] = float(np.sqrt(np.mean((phi - target) ** 2)))
    assert errors[8] < 0.6 * errors[1]


def test_emap_with_64_references_is_close_to_all_n_on_xor(
    analytic_data: dict[str, Path],
) -> None:
    from mmaudit.checks.ablation.emap import emap_logits

    ctx = make_context(analytic_config(analytic_data["xor"], form="xor"))
    y = ctx.target
    players = list(ctx.dataset.modalities)
    full = auroc(y, predicted_probs(ctx.cache.sweep().logits, "binary"))
    gaps = {}
    for r in (64, len(y)):
        projected, _ = emap_logits(ctx, players, "encoder", r)
        gaps[r] = full - auroc(y, predicted_probs(projected, "binary"))
    assert gaps[len(y)] > 0.3
    assert gaps[64] == pytest.approx(gaps[len(y)], abs=0.05)


# ------------------------------------------------------------------------- bad input


def test_a_modality_missing_for_every_sample_is_left_out_with_a_note(
    analytic_data: dict[str, Path],
) -> None:
    ctx = make_context(analytic_config(analytic_data["notext"]))
    out = run_check(ctx, emap_partners=16)
    assert out.metrics["n_modalities"] == 2
    assert any("text is missing for every sample" in n for n in out.notes)
    assert not any(k.startswith("loo.text") for k in out.metrics)
    assert out.metrics["shapley.image"].value > out.metrics["shapley.tabular"].value > 0
    json.dumps(json_safe(out.metrics), allow_nan=False)


def test_nothing_left_to_ablate_reports_the_full_model_and_why(
    analytic_data: dict[str, Path],
) -> None:
    cfg = analytic_config(analytic_data["notext"], modalities=("image", "text"))
    cfg["model"]["layers"] = {"image": "image_enc", "text": "text_enc"}
    out = AblationCheck(AblationCheck.Params(n_boot=50)).run(make_context(cfg))
    assert out.metrics["n_modalities"] == 1
    assert any("nothing to ablate" in n for n in out.notes)
    assert out.metrics["full.auroc"].value > 0.8 and out.metrics["full.auroc"].ci_low is not None
    json.dumps(json_safe(out.metrics), allow_nan=False)


def test_multiclass_target(analytic_data: dict[str, Path]) -> None:
    ctx = make_context(analytic_config(analytic_data["three"], form="three"))
    out = run_check(ctx, emap_partners=16)
    m = out.metrics
    assert m["share.text"].value == 0.0 and m["logit_share.text"].value == 0.0
    assert m["full.auroc"].value > 0.8 and m["shapley.image"].value > 0
    assert m["emap.gap"].value == pytest.approx(0.0, abs=1e-9)  # logits additive per class
    assert m["logit_shapley.efficiency_error"] < 1e-5
    json.dumps(json_safe(m), allow_nan=False)


def test_a_pattern_with_one_class_is_reported_empty_not_a_crash(additive_out: Any) -> None:
    m = json_safe(additive_out.metrics)
    assert m["pattern.image+tabular.n"] == TEXT_MISSING
    assert m["pattern.image+tabular.metric"]["value"] is None
    assert any("undefined" in n and "image+tabular" in n for n in additive_out.notes)
    assert m["pattern.image+text+tabular.metric"]["value"] > 0.8


def test_one_modality_is_skipped_and_three_write_a_report(
    analytic_data: dict[str, Path], tmp_path: Path
) -> None:
    import yaml

    from mmaudit.runner import Overrides, run_audit

    one = analytic_config(analytic_data["additive"], modalities=("image",))
    one["model"]["layers"] = {"image": "image_enc"}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(one))
    report = run_audit(path, tmp_path / "one", Overrides(checks=["ablation"]))
    assert report.checks["ablation"].status == "skipped"
    assert "at least 2 modalities" in (report.checks["ablation"].reason or "")

    three = analytic_config(
        analytic_data["additive"],
        checks={"ablation": {"params": {"n_boot": 50, "emap_partners": 8}}},
    )
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(three))
    report = run_audit(path, tmp_path / "three", Overrides(checks=["ablation"]))
    result = report.checks["ablation"]
    assert result.status == "warn", result.reason
    assert {"contributions", "coalitions", "robustness", "sample_shares"} <= set(result.figures)
    for rel in [*result.figures.values(), *result.tables.values()]:
        assert (tmp_path / "three" / rel).is_file()


# -------------------------------------------------------------------- bundled sample


@pytest.fixture(scope="session")
def sample_outputs() -> dict[str, Any]:
    """The check on the sample's test split (293 studies) for both bundled checkpoints."""
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    outs = {}
    for name in ("shortcut", "clean"):
        cfg.model.checkpoint = ROOT / "sample_data" / "checkpoints" / name
        adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
        cache = InferenceCache(adapter, ds, batch_size=150, seed=0)
        cache.request_layers(list(ds.modalities))
        ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)
        outs[name] = run_check(
            ctx, n_boot=100, emap_partners=16, robustness_strategy="permute", robustness_steps=3
        )
    return outs


def test_sample_contributions_match_the_planted_structure(sample_outputs: dict[str, Any]) -> None:
    """sample_data/README.md, "Expected audit verdicts", ablation row: `shortcut`: all three
    modalities contribute, text most, then the image (corner marker + opacity), then labs;
    `clean` (trained where the marker is uninformative): the same order, with a smaller image
    share than `shortcut`. Both use concat fusion with a linear head, which is
    additive in the encoder outputs, so EMAP finds no cross-modal interaction."""
    short, clean = (json_safe(sample_outputs[k].metrics) for k in ("shortcut", "clean"))

    def share(m: dict[str, Any], mod: str) -> float:
        return m[f"share.{mod}"]["value"]

    for m in (short, clean):
        for mod in ("image", "text", "tabular"):
            assert m[f"shapley.{mod}"]["ci_low"] > 0, mod  # every modality is used
        assert m["emap.gap"]["value"] == pytest.approx(0.0, abs=1e-6)
        assert m["logit_interaction.image_x_text"]["ci_high"] == 0.0  # not float noise
    for out in sample_outputs.values():  # additive by construction: not judged, a note says why
        assert "no_interaction" in out.exempt_rules
        assert not [f for f in out.findings if f.rule == "no_interaction"]
    assert share(short, "text") > share(short, "image") > share(short, "tabular")
    assert share(clean, "text") > share(clean, "image") > share(clean, "tabular")
    assert share(clean, "image") < share(short, "image")  # the marker no longer counts
    # the percentages documented in sample_data/README.md (image / text / labs), +-8 points
    for m, documented in ((short, (0.308, 0.554, 0.138)), (clean, (0.217, 0.679, 0.104))):
        for mod, pct in zip(("image", "text", "tabular"), documented, strict=True):
            assert share(m, mod) == pytest.approx(pct, abs=0.08), mod
