"""The ``embedding`` check: planted structure is recovered, clean counterparts pass, bad
input gives clear notes, and on the bundled sample the shortcut checkpoint's image
embedding agrees on site more than the clean checkpoint's does."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.embedding.budget import stratified_subsample
from mmaudit.checks.embedding.check import EmbeddingCheck, analyse
from mmaudit.checks.embedding.exemplars import _snippet
from mmaudit.checks.embedding.inputs import EmbeddingInputs, inputs_from_context
from mmaudit.checks.embedding.layer import pool
from mmaudit.checks.findings import judge
from mmaudit.methods import neighbours as nb

ROOT = Path(__file__).resolve().parents[2]
RULES = EmbeddingCheck.default_thresholds


def params(**changes: Any) -> EmbeddingCheck.Params:
    """Light settings so each synthetic run takes a fraction of a second."""
    base: dict[str, Any] = {
        "n_boot": 200,
        "n_permutations": 300,
        "silhouette_permutations": 50,
        "projections": ["pca"],
        "max_clusters": 4,
        "exemplar_errors": 0,
        "exemplar_random": 0,
    }
    return EmbeddingCheck.Params.model_validate(base | changes)


def inputs(
    layers: dict[str, np.ndarray],
    label: np.ndarray,
    attrs: dict[str, Any] | None = None,
    **extra: Any,
) -> EmbeddingInputs:
    n = len(label)
    names = extra.pop("class_names", [str(c) for c in range(int(np.max(label)) + 1)])
    return EmbeddingInputs(
        embeddings=layers,
        ids=np.array([f"r{i:03d}" for i in range(n)]),
        target=label,
        class_names=names,
        attributes=pd.DataFrame(attrs) if attrs else None,
        **extra,
    )


def value(out: CheckOutput, name: str) -> float:
    m = out.metrics[name]
    return float(getattr(m, "value", m))  # type: ignore[arg-type]


def rules_hit(out: CheckOutput) -> set[str]:
    return {f.rule for f in judge("embedding", out.metrics, RULES)}


# ----------------------------------------------------------------------------- planted structure


def test_planted_clusters_are_recovered() -> None:
    rng = np.random.default_rng(0)
    n = 180
    label = np.repeat([0, 1, 2], n // 3)
    centres = rng.normal(size=(3, 16)) * 4
    x = centres[label] + rng.normal(size=(n, 16))
    site = rng.choice(["A", "B"], size=n)
    out = analyse(
        inputs({"embedding": x}, label, {"site": site}, target_kind="multiclass"),
        params(),
    )
    sil = out.metrics["silhouette.embedding.label"]
    assert sil.value > 0.5 and sil.null_p <= 0.05  # type: ignore[union-attr]
    lift = out.metrics["knn_lift.embedding.label"]
    assert lift.value == pytest.approx(3.0, abs=0.05)  # every neighbour agrees: 1 / (1/3)
    assert lift.null_p <= 0.05 and lift.ci_low > 2.5  # type: ignore[union-attr]
    assert value(out, "clusters.embedding.k") == 3
    assert value(out, "clusters.embedding.purity.label") > 0.97
    assert value(out, "clusters.embedding.purity.site") < 0.75
    assert value(out, "identity_margin.embedding.site") < -0.5
    assert rules_hit(out) == set()  # the clean counterpart: label is the strongest axis
    density = analyse(
        inputs({"embedding": x}, label, {"site": site}, target_kind="multiclass"),
        params(clustering="hdbscan"),
    )
    assert value(density, "clusters.embedding.k") == 3
    assert value(density, "clusters.embedding.purity.label") > 0.97


def test_site_as_the_strongest_axis_raises_the_identity_finding() -> None:
    rng = np.random.default_rng(1)
    n = 200
    label = rng.integers(0, 2, n)
    site = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 12))
    x[:, 0] += 6.0 * site  # the site separates the space ...
    x[:, 1] += 0.7 * label  # ... the disease only nudges it
    attrs = {"site": np.where(site == 1, "B", "A"), "sex": rng.choice(["F", "M"], n)}
    out = analyse(inputs({"embedding": x}, label, attrs), params())
    margin = out.metrics["identity_margin.embedding.site"]
    assert margin.ci_low > 0.15 and margin.null_p <= 0.05  # type: ignore[union-attr]
    assert value(out, "clusters.embedding.nuisance_pure_label_mixed.site") > 0.9
    # the clusters table flags each cluster per attribute, in a column named like the metric
    # (True / False, never an empty cell that reads back as NaN)
    clusters = out.tables["clusters"]
    flag = clusters["nuisance_pure_label_mixed.site"]
    assert flag.dtype == bool and flag.any()
    counted = clusters[clusters["counted"]]
    share = counted.loc[counted["nuisance_pure_label_mixed.site"], "size"].sum()
    assert share / counted["size"].sum() == value(
        out, "clusters.embedding.nuisance_pure_label_mixed.site"
    )
    assert {"dataset_identity", "dataset_identity_head", "nuisance_pure_clusters"} <= rules_hit(out)
    findings = judge("embedding", out.metrics, RULES)
    assert "fail" in {f.severity for f in findings}
    # in an encoder's output the same structure warns (encoded is not used)
    as_image = analyse(inputs({"image": x}, label, attrs), params())
    severities = {f.rule: f.severity for f in judge("embedding", as_image.metrics, RULES)}
    assert severities == {"dataset_identity": "warn", "nuisance_pure_clusters": "warn"}
    # sex is not a nuisance attribute by default; naming it makes it one
    assert "identity_margin.embedding.sex" not in out.metrics
    out2 = analyse(inputs({"embedding": x}, label, attrs), params(nuisance_attributes=["sex"]))
    assert set(k for k in out2.metrics if k.startswith("identity_margin")) == {
        "identity_margin.embedding.sex"
    }
    assert rules_hit(out2) == set()


def test_permutations_are_raised_so_holm_over_the_family_can_reach_alpha() -> None:
    """4 layers x 4 factors = 16 tests: with 100 shuffles Holm could not go below
    16 / 101 = 0.158, so a planted site axis would never be a significant silhouette."""
    rng = np.random.default_rng(4)
    n = 160
    label = rng.integers(0, 2, n)
    site = rng.integers(0, 2, n)
    attrs = {
        "site": np.where(site == 1, "B", "A"),
        "sex": rng.choice(["F", "M"], n),
        "age": rng.choice(["young", "old"], n),
    }
    layers = {}
    for name in ("embedding", "image", "text", "tabular"):
        x = rng.normal(size=(n, 6))
        x[:, 0] += 8.0 * site  # site separates every layer; sex and age nothing
        layers[name] = x
    light = params(silhouette_permutations=100, n_permutations=100, clustering="none")
    out = analyse(inputs(layers, label, attrs), light)
    needed = math.ceil(2 * 16 / light.alpha) - 1
    assert any(f"silhouette_permutations: {needed} (not 100)" in n for n in out.notes)
    assert any(f"n_permutations: {needed} (not 100)" in n for n in out.notes)
    sil = out.metrics["silhouette.embedding.site"]
    assert sil.value > 0.5 and sil.null_p <= light.alpha / 2 + 1e-12  # type: ignore[union-attr]
    assert out.metrics["silhouette.embedding.sex"].null_p > 0.05  # type: ignore[union-attr]
    # 0 silhouette permutations means no p-value, and stays 0
    none = analyse(inputs(layers, label, attrs), params(silhouette_permutations=0))
    p0 = none.metrics["silhouette.embedding.site"].null_p  # type: ignore[union-attr]
    assert p0 is None or math.isnan(p0)
    assert not any(n.startswith("silhouette_permutations") for n in none.notes)


def test_random_embeddings_raise_nothing() -> None:
    rng = np.random.default_rng(2)
    n = 150
    label = rng.integers(0, 2, n)
    attrs = {"site": rng.choice(["A", "B", "C"], n), "age": rng.uniform(20, 90, n)}
    out = analyse(
        inputs({"embedding": rng.normal(size=(n, 10))}, label, attrs, continuous={"age": None}),
        params(),
    )
    assert rules_hit(out) == set()
    for name in ("label", "site", "age"):
        lift = out.metrics[f"knn_lift.embedding.{name}"]
        assert 0.7 < lift.value < 1.3  # type: ignore[union-attr]
    assert out.metrics["knn_lift.embedding.age"].n == n  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- bad input


def test_fewer_rows_than_neighbours() -> None:
    rng = np.random.default_rng(3)
    label = np.array([0, 1, 0, 1, 0, 1])
    out = analyse(inputs({"embedding": rng.normal(size=(6, 4))}, label), params(k=10))
    assert any("allow only k = 5" in n for n in out.notes)
    assert "knn_lift.embedding.label" in out.metrics


def test_constant_layer_is_left_out_with_a_note() -> None:
    rng = np.random.default_rng(4)
    label = rng.integers(0, 2, 40)
    layers = {"embedding": np.ones((40, 8)), "image": rng.normal(size=(40, 8))}
    out = analyse(inputs(layers, label), params())
    assert any("layer embedding" in n and "constant" in n for n in out.notes)
    assert "knn_lift.image.label" in out.metrics
    assert not any(k.startswith("knn_lift.embedding") for k in out.metrics)
    only_constant = analyse(inputs({"embedding": np.zeros((40, 8))}, label), params())
    assert only_constant.metrics["layers_analysed"] == 0


def test_nan_rows_are_named_and_left_out() -> None:
    rng = np.random.default_rng(5)
    label = rng.integers(0, 2, 50)
    x = rng.normal(size=(50, 6))
    x[[3, 17], 2] = np.nan
    x[30, 0] = np.inf
    out = analyse(inputs({"embedding": x}, label), params())
    note = next(n for n in out.notes if "NaN" in n)
    assert "r003" in note and "r017" in note and "r030" in note and "3 rows" in note
    assert out.metrics["excluded_rows.embedding"] == 3
    assert out.metrics["knn_lift.embedding.label"].n == 47  # type: ignore[union-attr]


def test_every_excluded_row_is_listed_with_its_reason() -> None:
    rng = np.random.default_rng(12)
    n = 60
    label = rng.integers(0, 2, n)
    image = rng.normal(size=(n, 6))
    nan_rows = np.arange(10, 24)  # more rows than the note names
    image[nan_rows, 1] = np.nan
    present = np.ones(n, bool)
    present[[2, 5, 10]] = False  # row 10 is absent and NaN: absence is the reason
    out = analyse(inputs({"image": image}, label, present={"image": present}), params())
    table = out.tables["excluded_rows"]
    expected = {f"r{i:03d}": "nan_inf" for i in nan_rows} | {
        f"r{i:03d}": "modality_absent" for i in (2, 5, 10)
    }
    assert dict(zip(table["id"], table["reason"], strict=True)) == expected
    assert len(table) == len(expected) and set(table["layer"]) == {"image"}
    assert out.metrics["excluded_rows.image"] == len(expected)
    assert any("13 rows" in note and "excluded_rows table" in note for note in out.notes)
    clean = analyse(inputs({"image": rng.normal(size=(n, 6))}, label), params())
    assert "excluded_rows" not in clean.tables


def test_one_dimensional_embedding_skips_the_2d_maps_with_a_note() -> None:
    rng = np.random.default_rng(13)
    n = 40
    label = rng.integers(0, 2, n)
    x = (label + 0.3 * rng.normal(size=n))[:, None]
    out = analyse(inputs({"embedding": x}, label), params(projections=["tsne", "umap"]))
    assert value(out, "knn_lift.embedding.label") > 1.3
    assert any("1-d embedding" in note and "tsne skipped" in note for note in out.notes)
    assert any("umap skipped" in note for note in out.notes)
    assert set(k for k in out.figures if k.startswith("projection")) == {"projection_embedding_pca"}
    assert "trustworthiness.embedding.pca" in out.metrics


def test_attribute_with_one_level_and_missing_values() -> None:
    rng = np.random.default_rng(6)
    n = 60
    label = rng.integers(0, 2, n)
    site = np.array(["A", "B"] * (n // 2), dtype=object)
    site[:7] = None
    attrs = {"scanner": ["X"] * n, "site": site}
    out = analyse(inputs({"embedding": rng.normal(size=(n, 5))}, label, attrs), params())
    assert any("'scanner' has one level ('X')" in n for n in out.notes)
    assert not any("scanner" in k for k in out.metrics)
    assert out.metrics["knn_lift.embedding.site"].n == n - 7  # type: ignore[union-attr]


def test_modality_rows_without_the_modality_are_left_out() -> None:
    rng = np.random.default_rng(7)
    n = 40
    label = rng.integers(0, 2, n)
    text = rng.normal(size=(n, 8))
    present = np.ones(n, bool)
    present[:5] = False
    out = analyse(inputs({"text": text}, label, present={"text": present}), params())
    assert out.metrics["excluded_rows.text"] == 5
    assert any("5 rows without that modality" in n for n in out.notes)


def test_token_outputs_are_pooled() -> None:
    x = np.arange(24, dtype=float).reshape(2, 3, 4)
    pooled, how = pool(x)
    np.testing.assert_allclose(pooled, x.mean(1))
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    pooled, how = pool(x, mask)
    np.testing.assert_allclose(pooled[1], x[1, 0])
    assert how is not None and "masked" in how
    assert pool(np.ones((2, 3, 4, 4)))[0].shape == (2, 3)


def test_stratified_subsample_keeps_proportions() -> None:
    strata = np.array(["a"] * 900 + ["b"] * 90 + ["c"] * 10)
    pick = stratified_subsample(strata, 100, np.random.default_rng(0))
    assert len(pick) == 100 and len(np.unique(pick)) == 100
    counts = pd.Series(strata[pick]).value_counts()
    assert counts["a"] == 90 and counts["b"] == 9 and counts["c"] == 1


# ----------------------------------------------------------------------------- the rest


def test_cross_modal_alignment_in_a_shared_space() -> None:
    rng = np.random.default_rng(8)
    n = 120
    label = rng.integers(0, 2, n)
    image = rng.normal(size=(n, 16))
    layers = {"image": image, "text": image + 0.3 * rng.normal(size=(n, 16))}
    layers["tabular"] = rng.normal(size=(n, 16))
    out = analyse(inputs(layers, label, shared_space=True), params(clustering="none"))
    assert value(out, "alignment.image_to_text.recall_at_1") > 0.9
    assert value(out, "alignment.text_to_image.recall_at_1") > 0.9
    assert value(out, "alignment.image_to_tabular.recall_at_10") < 0.25  # chance is 10/120
    assert value(out, "alignment.image_text.gap") < value(out, "alignment.image_tabular.gap") + 0.2
    no_space = analyse(inputs(layers, label, shared_space=False), params(clustering="none"))
    assert not any(k.startswith("alignment") for k in no_space.metrics)
    assert any("no shared projection space" in n for n in no_space.notes)


SEED_NEGATIVE_RIDGE = 5


def test_ordinal_severity_along_a_direction() -> None:
    rng = np.random.default_rng(9)
    n = 160
    grade = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 10))
    direction = rng.normal(size=10)
    x += np.outer(grade, direction) * 0.8
    levels = np.array(["none", "mild", "moderate", "severe"])
    names = levels[grade]
    label = (grade >= 2).astype(int)
    out = analyse(
        inputs({"embedding": x}, label, {"grade": names}),
        params(
            clustering="none",
            ordinal="grade",
            ordinal_levels=["none", "mild", "moderate", "severe"],
        ),
    )
    fitted = out.metrics["ordinal.embedding.spearman_fitted"]
    assert fitted.value > 0.8 and fitted.null_p <= 0.05  # type: ignore[union-attr]
    assert value(out, "ordinal.embedding.spearman_pc1") > 0.7
    # clean counterpart: severity unrelated to a wide embedding. Out-of-fold ridge
    # predictions then lean negative (rho -0.3 here), which a two-sided test flagged
    noise = np.random.default_rng(SEED_NEGATIVE_RIDGE)
    unrelated = levels[noise.integers(0, 4, 60)]
    clean = analyse(
        inputs({"embedding": noise.normal(size=(60, 40))}, label[:60], {"grade": unrelated}),
        params(
            clustering="none",
            ordinal="grade",
            ordinal_levels=["none", "mild", "moderate", "severe"],
        ),
    )
    clean_fitted = clean.metrics["ordinal.embedding.spearman_fitted"]
    assert clean_fitted.null_p > 0.05  # type: ignore[union-attr]
    unordered = analyse(
        inputs({"embedding": x}, label, {"grade": names}),
        params(clustering="none", ordinal="grade"),
    )
    assert any("ordinal_levels" in n for n in unordered.notes)


def test_exemplars_show_confident_errors_from_other_patients() -> None:
    rng = np.random.default_rng(10)
    n = 60
    label = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 6)) + label[:, None]
    probs = np.clip(0.5 + 0.4 * (2 * label - 1) * rng.uniform(-0.5, 1, n), 0, 1)[:, None]
    patients = np.array([f"p{i // 2}" for i in range(n)])
    texts = [f"report number {i} " * 8 for i in range(n)]
    out = analyse(
        inputs(
            {"embedding": x},
            label,
            {"site": rng.choice(["A", "B"], n)},
            probs=probs,
            groups=patients,
            texts=texts,
            load_image=lambda i: np.full((8, 8), float(i)),
        ),
        params(
            clustering="none", exemplar_errors=2, exemplar_random=1, exemplar_k=3, snippet_chars=30
        ),
    )
    table = out.tables["exemplars"]
    assert list(table["query_kind"].drop_duplicates()) == ["confident error", "random"]
    assert (table.groupby("query")["rank"].max() == 3).all()
    ids = np.array([f"r{i:03d}" for i in range(n)])
    patient_of = dict(zip(ids, patients, strict=True))
    for q, part in table.groupby("query"):
        assert (part["rank"] == 0).sum() == 1 and part.loc[part["rank"] == 0, "id"].item() == q
        others = part[part["rank"] > 0]["id"]
        assert all(patient_of[i] != patient_of[q] for i in others)
    assert table["snippet"].str.len().max() <= 30
    errors = table[(table["rank"] == 0) & (table["query_kind"] == "confident error")]
    wrong = (probs[:, 0] >= 0.5).astype(int) != label
    assert all(wrong[int(i[1:])] for i in errors["id"])
    exemplar_figures = {k for k in out.figures if k.startswith("exemplars_")}
    assert len(exemplar_figures) == 3 and exemplar_figures | {"exemplars"} <= out.private


def test_multilabel_targets() -> None:
    rng = np.random.default_rng(11)
    n = 80
    y = rng.integers(0, 2, (n, 2))
    x = rng.normal(size=(n, 6)) + 3 * y[:, :1]
    inp = inputs({"embedding": x}, y[:, 0], {"site": rng.choice(["A", "B"], n)})
    inp.target, inp.class_names, inp.target_kind = y, ["effusion", "edema"], "multilabel"
    inp.probs = rng.uniform(size=(n, 2))
    out = analyse(inp, params(exemplar_errors=1))
    assert value(out, "knn_lift.embedding.label.effusion") > 1.5
    assert "knn_lift.embedding.label.edema" in out.metrics
    assert "identity_margin.embedding.site" in out.metrics


# ----------------------------------------------------------------------------- the bundled sample


@pytest.fixture(scope="session")
def sample_outputs() -> dict[str, CheckOutput]:
    from mmaudit.checks.contract import AuditContext
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    light = params(layers=["image", "embedding"], clustering="none", n_boot=200, n_permutations=200)
    outs = {}
    for name in ("shortcut", "clean"):
        cfg = load_config(ROOT / "configs" / "sample.yaml")
        cfg.model.checkpoint = ROOT / "sample_data" / "checkpoints" / name
        cfg.runtime.device = "cpu"
        cfg.runtime.progress = False
        ds = build_dataset(cfg)
        adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
        cache = InferenceCache(adapter, ds, batch_size=64, seed=0)
        cache.request_layers(["embedding", "image"])
        ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)
        check = EmbeddingCheck(light)
        assert check.missing_requirements(ctx) is None
        outs[name] = check.run(ctx)
        assert adapter.hook_count() == 0
    return outs


def test_sample_shortcut_agrees_on_site_more_than_clean(
    sample_outputs: dict[str, CheckOutput],
) -> None:
    short, clean = sample_outputs["shortcut"], sample_outputs["clean"]
    assert value(short, "knn_lift.image.site") > value(clean, "knn_lift.image.site") + 0.3
    margin_short = short.metrics["identity_margin.image.site"]
    margin_clean = clean.metrics["identity_margin.image.site"]
    assert margin_short.ci_low > margin_clean.ci_high  # type: ignore[union-attr]
    assert "dataset_identity" in rules_hit(short)
    assert "dataset_identity" not in rules_hit(clean)


# ----------------------------------------------------------------------------- projections


def planted(n: int = 120, seed: int = 14) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Three well-separated label clusters, a random site and a continuous age."""
    rng = np.random.default_rng(seed)
    label = np.repeat([0, 1, 2], n // 3)
    x = rng.normal(size=(3, 12))[label] * 5 + rng.normal(size=(n, 12))
    attrs = {"site": rng.choice(["A", "B"], n), "age": rng.uniform(20, 90, n)}
    return x, label, attrs


def test_projections_are_drawn_coloured_and_scored() -> None:
    x, label, attrs = planted()
    n = len(label)
    probs = np.eye(3)[label] * 0.8 + 0.2 / 3
    out = analyse(
        inputs(
            {"embedding": x},
            label,
            attrs,
            probs=probs,
            target_kind="multiclass",
            continuous={"age": None},
        ),
        params(projections=["pca", "tsne"], projection_max_samples=50, clustering="none"),
    )
    for method in ("pca", "tsne"):
        fig = out.figures[f"projection_embedding_{method}"]
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]  # colour bars: no title
        assert titles == ["label", "prediction", "correct", "site", "age"]
        assert value(out, f"trustworthiness.embedding.{method}") > 0.9
    assert "50 rows" in out.figures["projection_embedding_tsne"].get_suptitle()
    assert f"{n} rows" in out.figures["projection_embedding_pca"].get_suptitle()


def test_umap_failure_falls_back_to_pca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    x, label, attrs = planted()
    out = analyse(
        inputs({"embedding": x, "image": x + 1}, label, attrs),
        params(projections=["umap"], clustering="none"),
    )
    for layer in ("embedding", "image"):
        assert f"projection_{layer}_pca" in out.figures
        assert value(out, f"trustworthiness.{layer}.pca") > 0.9
        assert f"projection_{layer}_umap" not in out.figures
    notes = [note for note in out.notes if note.startswith("UMAP unavailable")]
    assert len(notes) == 1 and notes[0].endswith("maps drawn: PCA")
    with_tsne = analyse(
        inputs({"embedding": x}, label, attrs),
        params(projections=["tsne", "umap"], projection_max_samples=50, clustering="none"),
    )
    assert any(note.endswith("maps drawn: t-SNE, PCA") for note in with_tsne.notes)


# ----------------------------------------------------------------------------- options


def test_memory_budget_reaches_every_distance_path(monkeypatch: pytest.MonkeyPatch) -> None:
    budget_mb = 0.001  # the 4096-element floor
    blocks: list[tuple[int, int]] = []
    null_budgets: list[float] = []
    real_distances, real_null = nb.pairwise_distances, nb.agreement_null

    def distances(a: torch.Tensor, b: torch.Tensor, metric: nb.Metric) -> torch.Tensor:
        blocks.append((a.shape[0], b.shape[0]))
        return real_distances(a, b, metric)

    def null(*args: Any, **kwargs: Any) -> np.ndarray:
        null_budgets.append(kwargs["memory_budget_mb"])
        return real_null(*args, **kwargs)

    monkeypatch.setattr(nb, "pairwise_distances", distances)
    monkeypatch.setattr(nb, "agreement_null", null)
    x, label, attrs = planted()
    layers = {"image": x[:, ::-1].copy(), "text": x + 0.1}  # retrieval too
    for clustering in ("kmeans", "hdbscan"):
        light = {"n_permutations": 20, "silhouette_permutations": 5, "n_boot": 50}
        analyse(
            inputs(layers, label, attrs, shared_space=True),
            params(memory_budget_mb=budget_mb, clustering=clustering, **light),
        )
    assert blocks and max(r for _, r in blocks) < len(label)
    assert all(q * r <= nb._MIN_ELEMENTS for q, r in blocks)
    assert null_budgets and set(null_budgets) == {budget_mb}


def test_cosine_metric_reaches_the_clustering() -> None:
    """Three directions in a narrow cone, lengths 1 to 10: cosine clusters are the
    directions; Euclidean k-means on the raw rows would cut by length instead."""
    rng = np.random.default_rng(15)
    n = 150
    label = np.repeat([0, 1, 2], n // 3)
    basis = np.linalg.qr(rng.normal(size=(10, 4)))[0].T
    directions = basis[0] + 0.35 * basis[1:]
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    length = rng.uniform(1.0, 10.0, n)
    x = (directions[label] + 0.02 * rng.normal(size=(n, 10))) * length[:, None]
    out = analyse(inputs({"embedding": x}, label), params(metric="cosine", max_clusters=6))
    assert value(out, "clusters.embedding.k") == 3
    assert value(out, "clusters.embedding.purity.label") > 0.97
    assert value(out, "clusters.embedding.silhouette") > 0.9


def test_named_exemplar_queries_and_the_nuisance_line() -> None:
    rng = np.random.default_rng(16)
    n = 50
    label = rng.integers(0, 2, n)
    attrs = {"site": rng.choice(["A", "B"], n), "scanner": rng.choice(["S1", "S2"], n)}
    out = analyse(
        inputs({"embedding": rng.normal(size=(n, 5))}, label, attrs),
        params(
            clustering="none",
            exemplar_ids=["r010", "nope", "r003", "r010"],
            exemplar_random=1,
            exemplar_k=2,
            nuisance_attributes=["scanner"],
        ),
    )
    table = out.tables["exemplars"]
    queries = table[table["rank"] == 0]
    assert list(queries["id"])[:2] == ["r010", "r003"]
    assert list(queries["query_kind"]) == ["named", "named", "random"]
    assert any("'nope'" in note and "not shown" in note for note in out.notes)
    label_text = out.figures["exemplars_01"].axes[0].get_xlabel()
    assert "scanner S" in label_text and "site" not in label_text


# ----------------------------------------------------------------------------- alignment


def test_planted_modality_gap_and_retrieval() -> None:
    """Unit image rows [cos t * u, sin t]; text = image + (0, ..., -2 sin t): unit rows
    too, so the gap (distance between the centroids of unit rows) is exactly 2 sin t."""
    rng = np.random.default_rng(17)
    n, t = 100, 0.3
    u = rng.normal(size=(n, 15))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    image = np.column_stack([np.cos(t) * u, np.full(n, np.sin(t))])
    shift = np.zeros(16)
    shift[-1] = -2 * np.sin(t)
    label = rng.integers(0, 2, n)
    out = analyse(
        inputs({"image": image, "text": image + shift}, label, shared_space=True),
        params(clustering="none"),
    )
    assert value(out, "alignment.image_text.gap") == pytest.approx(np.linalg.norm(shift), 1e-9)
    assert value(out, "alignment.image_to_text.recall_at_1") == 1.0
    assert value(out, "alignment.text_to_image.recall_at_1") == 1.0
    same = analyse(
        inputs({"image": image, "text": image.copy()}, label, shared_space=True),
        params(clustering="none"),
    )
    assert value(same, "alignment.image_text.gap") == pytest.approx(0.0, abs=1e-12)


def test_alignment_always_notes_unequal_widths() -> None:
    rng = np.random.default_rng(18)
    n = 40
    label = rng.integers(0, 2, n)
    layers = {"image": rng.normal(size=(n, 8)), "text": rng.normal(size=(n, 6))}
    out = analyse(inputs(layers, label), params(clustering="none", alignment="always"))
    assert not any(k.startswith("alignment") for k in out.metrics)
    assert any("alignment image-text: widths differ (8 vs 6)" in note for note in out.notes)


@pytest.fixture(scope="module")
def builtin_contexts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """An audit context over the tiny dataset for a random built-in image + tabular model."""
    import yaml
    from conftest import tiny_config, write_tiny_dataset

    from mmaudit.checks.contract import AuditContext
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model
    from mmaudit.engine.models import (
        ArchitectureSpec,
        TabularSpec,
        build_model,
        save_checkpoint,
        tiny_image_spec,
    )

    tmp = tmp_path_factory.mktemp("builtin_embedding")
    manifest = write_tiny_dataset(tmp / "data")

    def context(fusion: str) -> AuditContext:
        spec = ArchitectureSpec(
            modalities=["image", "tabular"],
            image=tiny_image_spec(16),
            tabular=TabularSpec(n_features=2, hidden=[8]),
            dim=8,
            fusion=fusion,  # type: ignore[arg-type]
        )
        torch.manual_seed(0)
        folder = save_checkpoint(build_model(spec).eval(), spec, tmp / fusion)
        path = tmp / f"{fusion}.yaml"
        path.write_text(yaml.safe_dump(tiny_config(manifest, {"checkpoint": str(folder)})))
        cfg = load_config(path)
        ds = build_dataset(cfg)
        adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
        cache = InferenceCache(adapter, ds, batch_size=16, seed=0)
        cache.request_layers(["image", "tabular"])
        return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)

    return context


def test_builtin_projection_fusion_is_a_shared_space(
    builtin_contexts: Callable[[str], Any],
) -> None:
    p = params(layers=["image", "tabular"], clustering="none")
    shared = inputs_from_context(builtin_contexts("projection"), p)
    assert shared.shared_space is True
    assert shared.embeddings["image"].shape[1] == shared.embeddings["tabular"].shape[1] == 8
    out = analyse(shared, p)
    assert "alignment.image_to_tabular.recall_at_1" in out.metrics
    assert "alignment.image_tabular.gap" in out.metrics
    concat = inputs_from_context(builtin_contexts("concat"), p)
    assert concat.shared_space is False
    out = analyse(concat, p)
    assert not any(k.startswith("alignment") for k in out.metrics)
    assert any("no shared projection space" in note for note in out.notes)


def test_snippets_end_at_a_sentence_or_word() -> None:
    text = "Lungs clear. Focal opacity in the left lower lobe. No effusion."
    inp = EmbeddingInputs(
        embeddings={}, ids=np.array(["a"]), target=np.array([0]), class_names=["0"], texts=[text]
    )
    assert _snippet(inp, 0, 200) == text
    assert _snippet(inp, 0, 30) == "Lungs clear. Focal opacity…"  # a word boundary
    assert _snippet(inp, 0, 55) == "Lungs clear. Focal opacity in the left lower lobe. …"
    assert _snippet(inp, 0, 0) == ""
