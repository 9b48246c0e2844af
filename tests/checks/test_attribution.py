"""Check ``attribution``: planted words and labs with known contributions, and the sample.

The toy model is additive by construction -- ``logit = w_img * mean brightness +
sum of one-dimensional word embeddings + sum_j (a_j x_j + b_j x_j^2)`` -- so every right
answer is known: IG of a word is its embedding value, SHAP of a lab is
``a_j (x_j - E x_j) + b_j (x_j^2 - E x_j^2)`` over the background, and the modality
shares follow from the encoder outputs. A word planted in the reports of site B and keyed
on by the model must top the ranking and fail the site test; the same model keyed on a
clinical word must not. On the bundled sample the planted report and lab structure
(sample_data/README.md) is recovered.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mmaudit.checks.attribution.check import AttributionCheck
from mmaudit.checks.contract import AuditContext
from mmaudit.checks.findings import judge
from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.cache import InferenceCache
from mmaudit.engine.config import AuditConfig
from mmaudit.engine.data import AuditDataset

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "sample_data" / "tokenizer"
SIZE = 16
POSITIVE = (
    "patchy opacity in the right lower lobe.",
    "focal consolidation in the left base.",
    "hazy opacity. findings concerning for pneumonia.",
)
NEGATIVE = ("lungs are clear.", "no acute disease.", "heart size is normal. lungs are clear.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _close_figures() -> Any:
    """The report writer closes a check's figures; here nobody writes them."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# --------------------------------------------------------------------------- toy data


def write_text_dataset(folder: Path, n: int = 80, seed: int = 0) -> Path:
    """Image + report + labs; site B reports start with "portable chest radiograph."."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        patient = i // 2
        site = "B" if patient % 2 else "A"
        label = int(rng.random() < (0.75 if site == "B" else 0.25))
        img = rng.normal(90 + 40 * label, 8, (SIZE, SIZE))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"s{i}.png")
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(folder / "masks" / f"s{i}.png")
        report = str(rng.choice(POSITIVE if label else NEGATIVE))
        if site == "B":
            report = "portable chest radiograph. " + report
        if i % 10 == 9:
            report = ""
        rows.append(
            {
                "id": f"s{i}",
                "patient": f"p{patient}",
                "site": site,
                "sex": "F" if i % 3 else "M",
                "label": label,
                "image_path": f"images/s{i}.png",
                "mask_path": f"masks/s{i}.png",
                "report": report,
                "lab_a": float(rng.normal(label, 1.0)),
                "lab_b": float(rng.normal(0, 1.0)) if i % 7 else np.nan,
                "lab_empty": np.nan,
            }
        )
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def config_for(manifest: Path, **data: Any) -> AuditConfig:
    raw: dict[str, Any] = {
        "model": {"factory": "unused:build"},
        "data": {
            "manifest": str(manifest),
            "id": "id",
            "patient": "patient",
            "target": {"column": "label"},
            "image": {"column": "image_path", "roi_mask": "mask_path", "size": SIZE},
            "text": {"column": "report", "tokenizer": str(TOKENIZER), "max_length": 24},
            "tabular": {"columns": ["lab_a", "lab_b"], "normalization": "none"},
            "attributes": {"site": {}, "sex": {}},
        },
        "runtime": {"device": "cpu", "batch_size": 32, "progress": False},
    }
    raw["data"].update(data)
    return AuditConfig.model_validate(raw)


class BagOfWords(nn.Module):
    """Text encoder: the sum of ``dim``-dimensional word embeddings (IG is exact for it)."""

    def __init__(self, vocab: int, dim: int = 1) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim, padding_idx=0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (self.word_embeddings(input_ids) * attention_mask[..., None]).sum(1)


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x * x], dim=1)


class Additive(nn.Module):
    """logit = w_img * brightness + sum of word values + sum_j (a_j x_j + b_j x_j^2)."""

    def __init__(self, vocab: int, words: dict[int, float], a: list[float], b: list[float]):
        super().__init__()
        self.img_enc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.img_head = nn.Linear(1, 1, bias=False)
        self.text_enc = BagOfWords(vocab)
        self.tab_enc = Square()
        self.tab_head = nn.Linear(2 * len(a), 1, bias=False)
        with torch.no_grad():
            self.img_head.weight.fill_(0.5)
            g = torch.Generator().manual_seed(0)
            emb = self.text_enc.word_embeddings.weight
            emb.copy_(torch.randn(emb.shape, generator=g) * 0.05)
            emb[:5] = 0.0  # special tokens carry nothing
            for t, v in words.items():
                emb[t] = v
            self.tab_head.weight.copy_(torch.tensor([[*a, *b]]))

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        tabular: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.img_head(self.img_enc(image))
        if input_ids is not None:
            assert attention_mask is not None
            out = out + self.text_enc(input_ids, attention_mask)
        if tabular is not None:
            out = out + self.tab_head(self.tab_enc(tabular))
        return out


LAYERS = {"image": "img_enc", "text": "text_enc", "tabular": "tab_enc"}
KEYWORDS = {
    "image": "image",
    "text": "input_ids",
    "text_mask": "attention_mask",
    "tabular": "tabular",
}


def make_context(
    cfg: AuditConfig, module: nn.Module, layers: dict[str, str] | None = None
) -> AuditContext:
    ds = AuditDataset(cfg.data, cfg.runtime)
    keywords = {k: v for k, v in KEYWORDS.items() if k in ds.modalities or k == "text_mask"}
    if "text" not in ds.modalities:
        keywords.pop("text_mask")
    adapter = ModelAdapter(
        module,
        source="test",
        modalities=ds.modalities,
        keywords=keywords,
        layers={
            k: v for k, v in (LAYERS if layers is None else layers).items() if k in ds.modalities
        },
        detected={},
        device=torch.device("cpu"),
    )
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    cache.request_layers([m for m in ds.modalities if m in adapter.layers])
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


def quick(**kw: Any) -> AttributionCheck:
    params = {"n_boot": 200, "min_count": 3, "tabular_method": "gradient", "ig_steps": 8, **kw}
    return AttributionCheck(AttributionCheck.Params(**params))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_dataset(tmp_path_factory.mktemp("textdata"))


@pytest.fixture(scope="module")
def vocab() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def keyed_model(vocab: Any, word: str, value: float = 2.0) -> Additive:
    return Additive(len(vocab), {vocab.convert_tokens_to_ids(word): value}, [1.0, -0.5], [0.3, 0.0])


@pytest.fixture(scope="module")
def portable_run(manifest: Path, vocab: Any) -> tuple[AuditContext, Any]:
    ctx = make_context(config_for(manifest), keyed_model(vocab, "portable"))
    return ctx, quick().run(ctx)


# --------------------------------------------------------------------------- text


def test_planted_site_word_tops_ranking_and_fails_site_test(portable_run: Any) -> None:
    ctx, out = portable_run
    ranking = out.tables["word_ranking"]
    top = ranking[(ranking["class"] == "1") & (ranking["rank"] == 1)]
    assert top["word"].item() == "portable"
    assert out.metrics["text.top_words.1"].startswith("portable")
    est = out.metrics["text.site_word_share.portable"]
    assert est.null_p is not None and est.null_p < 0.05
    assert est.value > 0.5  # the only large attribution in every site-B report
    findings = judge("attribution", out.metrics, AttributionCheck.default_thresholds)
    flagged = [f for f in findings if f.rule == "site_word"]
    assert [f.metric for f in flagged] == ["text.site_word_share.portable"]
    assert flagged[0].severity == "fail"
    assert "portable" in set(AttributionCheck.Params().stoplist)
    assert out.metrics["text.stoplist_share"].value > 0.5
    assert ctx.adapter.hook_count() == 0


def test_ig_is_exact_and_complete_on_a_linear_text_encoder(portable_run: Any, vocab: Any) -> None:
    ctx, out = portable_run
    assert out.metrics["text.completeness_error"] < 1e-5
    emb = ctx.adapter.module.text_enc.word_embeddings.weight.detach().numpy()[:, 0]
    examples = out.tables["text_examples"]
    for word, value in examples.groupby("word")["attribution"].first().items():
        ids = vocab(str(word), add_special_tokens=False)["input_ids"]
        assert value == pytest.approx(float(emb[ids].sum()), abs=1e-5)


def test_clinical_keyword_is_not_flagged(manifest: Path, vocab: Any) -> None:
    ctx = make_context(config_for(manifest), keyed_model(vocab, "opacity"))
    out = quick(tabular=False, shares=False).run(ctx)
    ranking = out.tables["word_ranking"]
    assert ranking[ranking["class"] == "1"]["word"].iloc[0] == "opacity"
    findings = judge("attribution", out.metrics, AttributionCheck.default_thresholds)
    assert not [f for f in findings if f.rule in ("site_word", "stoplist_words")]


def test_rare_word_with_a_huge_score_does_not_top_the_ranking(manifest: Path, vocab: Any) -> None:
    """'hazy' occurs in fewer reports than min_count; its large value must not rank."""
    model = Additive(
        len(vocab),
        {vocab.convert_tokens_to_ids("hazy"): 50.0, vocab.convert_tokens_to_ids("opacity"): 1.0},
        [1.0, 0.0],
        [0.0, 0.0],
    )
    ctx = make_context(config_for(manifest), model)
    count = sum("hazy" in t for t in ctx.dataset.texts)
    out = quick(tabular=False, shares=False, min_count=count + 1).run(ctx)
    assert "hazy" not in set(out.tables["word_ranking"]["word"])


def test_min_count_above_every_word_is_noted(manifest: Path, vocab: Any) -> None:
    ctx = make_context(config_for(manifest), keyed_model(vocab, "portable"))
    out = quick(tabular=False, shares=False, min_count=1000, n_examples=0).run(ctx)
    assert out.tables["word_ranking"].empty and "text_word_ranking" not in out.figures
    assert any("no word occurs in min_count=1000 reports" in n for n in out.notes)


# --------------------------------------------------------------------------- tabular


def test_shap_ranks_and_tracks_known_additive_contributions(manifest: Path, vocab: Any) -> None:
    """GradientShap (the fast option) through the check: the labs' SHAP values follow the
    known contributions; exactness of the default permutation explainer is tested in
    test_tabular_shap.py."""
    ctx = make_context(config_for(manifest), keyed_model(vocab, "portable"))
    out = quick(text=False, shares=False, n_background=40).run(ctx)
    table = out.tables["tabular_shap_values"]
    ids = list(ctx.dataset.ids)
    x = ctx.dataset.tabular.numpy()[[ids.index(i) for i in table["id"]]]
    contribution = np.column_stack([1.0 * x[:, 0] + 0.3 * x[:, 0] ** 2, -0.5 * x[:, 1]])
    for j, lab in enumerate(("lab_a", "lab_b")):
        assert np.corrcoef(table[lab], contribution[:, j])[0, 1] > 0.97
    assert out.metrics["tabular.top_feature"] == "lab_a"
    assert out.metrics["tabular.additivity_error"] < 1e-5
    assert "tabular: SHAP (gradient) on" in " ".join(out.notes)
    assert out.metrics["tabular.site_feature_share.lab_a"].null_p > 0.05
    assert set(out.tables["tabular_importance_by_subgroup"]["attribute"]) == {"site", "sex"}


def test_all_missing_column_is_noted_not_ranked(manifest: Path, vocab: Any, tmp_path: Path) -> None:
    """A lab blank in every audited row (it has a value only outside the split: a column
    blank in the whole manifest is bad input) is noted, not ranked."""
    frame = pd.read_csv(manifest, dtype=str)
    extra = frame.iloc[[0]].assign(id="outside", lab_empty="1.0")
    both = pd.concat([frame.assign(split="test"), extra.assign(split="train")])
    split_manifest = tmp_path / "manifest.csv"
    both.to_csv(split_manifest, index=False)
    cfg = config_for(
        split_manifest,
        tabular={"columns": ["lab_a", "lab_b", "lab_empty"], "normalization": "none"},
        split={"column": "split", "values": ["test"]},
        image={
            "column": "image_path",
            "roi_mask": "mask_path",
            "size": SIZE,
            "root": str(manifest.parent),
        },
    )
    model = Additive(len(vocab), {}, [1.0, -0.5, 3.0], [0.3, 0.0, 0.0])
    ctx = make_context(cfg, model)
    out = quick(text=False, shares=False).run(ctx)
    assert "lab_empty" not in set(out.tables["tabular_importance"]["feature"])
    assert "tabular.importance.lab_empty" not in out.metrics
    assert any("missing in every row" in n and "lab_empty" in n for n in out.notes)


# --------------------------------------------------------------------------- shares


def test_modality_shares_equal_the_additive_contributions(portable_run: Any) -> None:
    ctx, out = portable_run
    ds = ctx.dataset
    assert out.metrics["shares.completeness_error"] < 1e-5
    emb = {m: ctx.cache.embeddings(m) for m in ("image", "text", "tabular")}
    model = ctx.adapter.module
    head = {
        "image": model.img_head.weight.detach().numpy().ravel(),
        "text": np.ones(1),
        "tabular": model.tab_head.weight.detach().numpy().ravel(),
    }
    contrib = {}
    for k, m in enumerate(("image", "text", "tabular")):
        mean = emb[m][ds.present[:, k]].mean(0)
        contrib[m] = np.abs((emb[m] - mean) @ head[m])
    total = sum(contrib.values())
    frame = out.per_sample.set_index("id")
    rows = ds.present.all(1)
    for m in contrib:
        got = frame[f"share.{m}"].to_numpy()[rows]
        assert np.allclose(got, (contrib[m] / total)[rows], atol=1e-4)
    assert set(out.tables["modality_shares"]["modality"]) == {"image", "text", "tabular"}


def test_ig_shares_equal_coalition_shapley_shares_on_an_additive_model(
    portable_run: Any,
) -> None:
    """For an additive fusion both methods give each modality exactly its own term, so the
    IG shares and the exact coalition-Shapley shares agree per sample."""
    ctx, out = portable_run
    frame = out.per_sample.set_index("id")
    rows = ctx.dataset.present.all(1)
    for m in ("image", "text", "tabular"):
        ig = frame[f"share.{m}"].to_numpy()[rows]
        shapley = frame[f"ablation_share.{m}"].to_numpy()[rows]
        assert np.isfinite(ig).all()
        assert np.abs(ig - shapley).max() < 1e-4
    assert out.metrics["shares.max_abs_diff_vs_ablation"] < 1e-4
    table = out.tables["modality_shares"].set_index("modality")
    assert {"ablation_share", "ablation_ci_low", "ablation_ci_high", "diff"} <= set(table.columns)
    assert np.allclose(table["share"], table["ablation_share"], atol=1e-4)
    assert any("the same reference as the IG path" in n for n in out.notes)


def test_shares_against_another_reference_are_not_read_as_interaction(
    manifest: Path, vocab: Any
) -> None:
    """The same additive model, its coalition game removing to zeros while IG starts from
    the mean: the shares differ through the reference alone, and the note says so instead
    of reading the gap as interaction."""
    ctx = make_context(config_for(manifest), keyed_model(vocab, "portable"))
    out = quick(text=False, tabular=False, ablation_removal="zero").run(ctx)
    assert out.metrics["shares.max_abs_diff_vs_ablation"] > 0.01  # measured 0.12; 6e-9 same ref
    note = next(n for n in out.notes if n.startswith("shares: IG shares"))
    assert "a different reference from the IG path's 'mean'" in note
    assert "the same reference" not in note


def test_token_table_lists_every_attributed_token_in_order() -> None:
    """Known answer: two reports, their word spans, token texts and attributions."""
    from types import SimpleNamespace

    from mmaudit.checks.attribution.text_ig import token_table

    class Tok:
        calls = 0

        def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
            Tok.calls += 1
            return [f"t{i}" for i in ids]

    ids = torch.tensor([[9, 10, 11, 0], [20, 21, 22, 23], [30, 31, 0, 0]])
    ds = SimpleNamespace(input_ids=ids, ids=np.array(["a", "b", "c"]), tokenizer=Tok())
    attr = np.arange(8, dtype=np.float32).reshape(2, 4)
    spans = [[("x", [1]), ("yz", [2, 3])], [("w", [0, 1])]]
    table = token_table(SimpleNamespace(dataset=ds), np.array([1, 2]), spans, attr)  # type: ignore[arg-type]
    assert table.to_dict("list") == {
        "id": ["b", "b", "b", "c", "c"],
        "position": [1, 2, 3, 0, 1],
        "token": ["t21", "t22", "t23", "t30", "t31"],
        "word_index": [0, 1, 1, 0, 0],
        "word": ["x", "yz", "yz", "w", "w"],
        "attribution": [1.0, 2.0, 3.0, 4.0, 5.0],
    }
    assert Tok.calls == 1  # one tokenizer call for the whole table
    empty = token_table(SimpleNamespace(dataset=ds), np.array([1]), [[]], attr[:1])  # type: ignore[arg-type]
    assert list(empty.columns) == ["id", "position", "token", "word_index", "word", "attribution"]
    assert empty.empty


def test_shares_differ_from_coalition_shapley_when_modalities_interact(
    manifest: Path, vocab: Any
) -> None:
    """The counterpart: a fusion that saturates, ``3 tanh(4 (image + text) - 2) + labs``, has an
    image x text interaction, which IG (the straight path) and coalition Shapley (the
    average over coalitions) split differently, so the table shows a gap. (A plain product
    would not do: for a bilinear term the two methods coincide.)"""

    class Saturating(Additive):
        def forward(self, image, input_ids, attention_mask, tabular):  # type: ignore[no-untyped-def]
            img = self.img_head(self.img_enc(image))
            txt = self.text_enc(input_ids, attention_mask)
            return 3.0 * torch.tanh(4.0 * (img + txt) - 2.0) + self.tab_head(self.tab_enc(tabular))

    model = Saturating(
        len(vocab), {vocab.convert_tokens_to_ids("portable"): 2.0}, [1.0, -0.5], [0.3, 0.0]
    )
    ctx = make_context(config_for(manifest), model)
    out = quick(text=False, tabular=False, ig_steps=32).run(ctx)
    assert out.metrics["shares.completeness_error"] < 1e-3
    assert out.metrics["shares.max_abs_diff_vs_ablation"] > 0.02  # measured 0.057
    frame = out.per_sample.set_index("id")
    gap = np.abs(frame["share.image"] - frame["ablation_share.image"]).dropna()
    assert gap.median() > 0.02  # measured 0.05


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_skipped_with_a_reason(manifest: Path, vocab: Any) -> None:
    model = keyed_model(vocab, "portable")
    ctx = make_context(config_for(manifest), model)
    check = quick()
    # every report missing: text skipped, tabular still runs
    empty = copy.copy(ctx)
    empty.dataset = copy.copy(ctx.dataset)
    empty.dataset.present = ctx.dataset.present.copy()
    empty.dataset.present[:, ctx.dataset.modalities.index("text")] = False
    from mmaudit.checks.attribution.scope import tabular_unavailable, text_unavailable

    assert text_unavailable(empty) == "every report is empty or missing"
    # a tokenizer that knows no word: every content token is [UNK]
    unk = copy.copy(ctx)
    unk.dataset = copy.copy(ctx.dataset)
    ids = ctx.dataset.input_ids.clone()
    content = ctx.dataset.attention_mask.bool() & (ids > 4)
    ids[content] = vocab.unk_token_id
    unk.dataset.input_ids = ids
    assert "[UNK]" in (text_unavailable(unk) or "")
    # no labs at all and no text: nothing to attribute, the check is skipped
    both = copy.copy(unk)
    both.dataset = copy.copy(unk.dataset)
    both.dataset.tabular_missing = torch.ones_like(ctx.dataset.tabular_missing)
    assert tabular_unavailable(both) == "every tabular column is empty in every row"
    reason = check.missing_requirements(both)
    assert reason is not None and reason.startswith("nothing to attribute")
    # a model without text input and data without labs
    cfg = config_for(manifest)
    cfg.data.tabular = None
    ctx2 = make_context(cfg, model)
    ctx2.adapter.keywords.pop("text")
    reason = check.missing_requirements(ctx2)
    assert reason is not None and "takes no report text" in reason


def test_text_part_notes_its_skip_and_the_rest_runs(manifest: Path, vocab: Any) -> None:
    cfg = config_for(manifest)
    ctx = make_context(cfg, keyed_model(vocab, "portable"), layers={"tabular": "tab_enc"})
    ctx.adapter.keywords.pop("text")
    out = quick(shares=False).run(ctx)
    assert any(n.startswith("text: skipped: the model takes no report text") for n in out.notes)
    assert "tabular.importance.lab_a" in out.metrics
    assert ctx.adapter.hook_count() == 0


# --------------------------------------------------------------------------- the sample


@pytest.fixture(scope="module")
def sample_run() -> tuple[AuditContext, Any]:
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.max_samples = 160
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=64, seed=0)
    cache.request_layers([k for k in ("embedding", *ds.modalities) if k in adapter.layers])
    ctx = AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)
    out = quick(ig_steps=16, min_count=5, n_examples=2).run(ctx)
    return ctx, out


def _pooled_word_mean(ctx: AuditContext, out: Any, words: set[str]) -> Any:
    """Mean attribution (positive-class logit) of every occurrence of ``words``, CI by
    patient, from the per-token table."""
    from mmaudit.methods.stats import bootstrap_ci

    tokens = out.tables["text_token_attributions"]
    occ = tokens.groupby(["id", "word_index", "word"], as_index=False)["attribution"].sum()
    occ = occ[occ["word"].isin(words)]
    patient = dict(zip(ctx.dataset.ids, np.asarray(ctx.groups), strict=True))
    groups = np.array([patient[i] for i in occ["id"]])
    return bootstrap_ci(np.mean, occ["attribution"].to_numpy(), groups=groups, n_boot=300)


def test_sample_planted_report_and_lab_structure_is_recovered(sample_run: Any) -> None:
    """sample_data/README.md plants finding words in positive reports, "clear" / negated
    wording in negative ones, and wbc, crp (strong), temp (weak), spo2, lactate (noise).
    Measured here (160 test rows, 16 IG steps, GradientShap): finding words pooled +0.19
    [0.09, 0.28] (per word: airspace +0.64, consolidation +0.18, opacity -0.05 (CI spans
    0), infiltrate n=5), "clear" / "no" / "normal" pooled -0.36 [-0.40, -0.31]; mean |SHAP|
    wbc 0.69, crp 0.33, lactate 0.13, temp 0.08, spo2 0.06: the model leans on lactate
    beyond its planted noise (it learned a spurious pattern of its training split), so
    lactate is not asserted to be ~0."""
    ctx, out = sample_run
    imp = {
        f: out.metrics[f"tabular.importance.{f}"].value
        for f in ("wbc", "crp", "temp", "spo2", "lactate")
    }
    assert min(imp["wbc"], imp["crp"]) > 2 * max(imp["spo2"], imp["temp"], imp["lactate"])
    findings_words = _pooled_word_mean(
        ctx, out, {"opacity", "consolidation", "airspace", "infiltrate"}
    )
    assert findings_words.n > 30 and findings_words.ci_low > 0, findings_words
    negation = _pooled_word_mean(ctx, out, {"clear", "no", "normal"})
    assert negation.n > 30 and negation.ci_high < 0, negation
    clear = _pooled_word_mean(ctx, out, {"clear"})
    assert clear.ci_high < 0, clear
    assert out.metrics["text.completeness_error"] < 0.05
    # no site word in the sample's reports: the site test flags nothing
    findings = judge("attribution", out.metrics, AttributionCheck.default_thresholds)
    assert not [f for f in findings if f.rule in ("site_word", "site_feature")]
    assert ctx.adapter.hook_count() == 0
    assert set(out.figures) >= {"text_examples", "tabular_beeswarm", "modality_shares"}
    assert {"text_examples", "text_token_attributions"} <= out.private
    # the sample models fuse by concatenation and a linear head: additive in the encoder
    # outputs, so IG shares and coalition-Shapley shares coincide
    assert out.metrics["shares.max_abs_diff_vs_ablation"] < 1e-4


class TwoLogits(nn.Module):
    """A multiclass head over the additive model: logits (-f, f)."""

    def __init__(self, inner: Additive) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs: torch.Tensor) -> torch.Tensor:
        f = self.inner(**kwargs)
        return torch.cat([-f, f], dim=1)


def test_multiclass_attributes_each_sample_toward_its_predicted_class(
    manifest: Path, vocab: Any
) -> None:
    cfg = config_for(manifest, target={"column": "label", "kind": "multiclass"})
    layers = {k: f"inner.{v}" for k, v in LAYERS.items()}
    ctx = make_context(cfg, TwoLogits(keyed_model(vocab, "portable")), layers=layers)
    out = quick().run(ctx)
    assert out.notes[0] == "attributions explain the logit of each sample's predicted class"
    ranking = out.tables["word_ranking"]
    assert set(ranking["class"]) == {"0", "1"}
    assert ranking[ranking["class"] == "1"]["word"].iloc[0] == "portable"
    assert out.metrics["text.completeness_error"] < 1e-5
    assert out.metrics["shares.completeness_error"] < 1e-5


# --------------------------------------------------------------------------- more bad input


def _unk_context(ctx: AuditContext, vocab: Any) -> AuditContext:
    """``ctx`` with a tokenizer that knows no word: every content token is [UNK]."""
    unk = copy.copy(ctx)
    unk.dataset = copy.copy(ctx.dataset)
    ids = ctx.dataset.input_ids.clone()
    ids[ctx.dataset.attention_mask.bool() & (ids > 4)] = vocab.unk_token_id
    unk.dataset.input_ids = ids
    return unk


def test_unknown_tokens_skip_the_text_part_at_check_level(manifest: Path, vocab: Any) -> None:
    ctx = _unk_context(make_context(config_for(manifest), keyed_model(vocab, "portable")), vocab)
    only_text = quick(tabular=False)
    reason = only_text.missing_requirements(ctx)
    assert reason is not None and reason.startswith("nothing to attribute: text: the tokenizer")
    assert "[UNK]" in reason
    out = quick(shares=False).run(ctx)  # labs still attributed, the text part says why not
    assert any(n.startswith("text: skipped: the tokenizer maps 100%") for n in out.notes)
    assert "word_ranking" not in out.tables and "tabular.importance.lab_a" in out.metrics


def test_model_without_tabular_input_skips_the_labs_only(manifest: Path, vocab: Any) -> None:
    ctx = make_context(
        config_for(manifest),
        keyed_model(vocab, "portable"),
        layers={"image": "img_enc", "text": "text_enc"},
    )
    ctx.adapter.keywords.pop("tabular")
    out = quick().run(ctx)
    assert any(n == "tabular: skipped: the model takes no tabular input" for n in out.notes)
    assert out.tables["word_ranking"]["word"].iloc[0] == "portable"
    assert set(out.tables["modality_shares"]["modality"]) == {"image", "text"}
    assert ctx.adapter.hook_count() == 0


def test_hostile_reports_go_through_the_check(tmp_path: Path, vocab: Any) -> None:
    """Markup, TeX and blank reports: no crash, figures draw (no mathtext parsing), and the
    text stays literal for the report's escaping (tested in test_report.py)."""
    import io

    manifest = write_text_dataset(tmp_path, n=40)
    frame = pd.read_csv(manifest)
    hostile = ["<script>alert('x')</script> opacity.", "cost $x^2$ and $5 opacity.", "   ", "..."]
    for k, text in enumerate(hostile * 3):
        frame.loc[k, "report"] = text
    frame.to_csv(manifest, index=False)
    ctx = make_context(config_for(manifest), keyed_model(vocab, "opacity"))
    out = quick(n_examples=40, min_count=2).run(ctx)
    for fig in out.figures.values():
        fig.savefig(io.BytesIO(), format="png")
    words = set(out.tables["text_examples"]["word"])
    assert {"<", "script", ">", "$", "x", "^"} <= words  # literal pieces, nothing dropped
    example = next(n for n in out.notes if n.startswith("example s0:"))
    assert "«script" in example and "</" in example  # plain text: the renderer escapes it
    assert out.metrics["text.completeness_error"] < 1e-5


def test_highlight_figure_shows_attribution_toward_the_titled_class(
    portable_run: Any,
) -> None:
    from mmaudit.checks.attribution.text_examples import _highlight_figure

    _, out = portable_run
    table = out.tables["text_examples"]
    neg = table[table["toward_class"] == "0"]
    assert len(neg) and np.allclose(neg["attribution_toward_class"], -neg["attribution"])
    assert any("toward class 0" in n for n in out.notes)
    fig = _highlight_figure([("t", [("portable", 2.0), ("chest", 0.1), ("clear", -1.9)])])
    colours = {t.get_text(): t.get_color() for t in fig.texts}
    assert colours["portable"] == colours["clear"] == "white"  # dark cells
    assert colours["chest"] == "black"


# --------------------------------------------------------------------------- signs


def test_class_views_are_signed_and_labelled_by_the_score_they_show(
    manifest: Path, vocab: Any
) -> None:
    """Known answer: the positive-class logit rises by exactly 2 per "portable" (IG of a
    bag-of-words term is its value). Toward class 1 the word scores +2; the class-0 view is
    the same attribution negated, -2 toward class 0 (it pushes away from class 0), and the
    direction / logit_attribution columns say so."""
    ctx = make_context(config_for(manifest), keyed_model(vocab, "portable"))
    out = quick(tabular=False, shares=False, top_words=1000).run(ctx)
    assert out.notes[0].startswith(
        "attributions explain the logit of the positive class (1); every view toward class 0"
    )
    ranking = out.tables["word_ranking"].set_index(["class", "word"])
    up, down = ranking.loc[("1", "portable")], ranking.loc[("0", "portable")]
    assert up["mean_attribution"] == pytest.approx(2.0, abs=1e-4)
    assert down["mean_attribution"] == pytest.approx(-2.0, abs=1e-4)
    assert up["logit_attribution"] == down["logit_attribution"] == pytest.approx(2.0, abs=1e-4)
    assert up["direction"] == "toward 1: logit(1)"
    assert down["direction"] == "toward 0: -logit(1)"
    assert up["rank"] == 1 and down["rank"] == ranking.loc["0"]["rank"].max()  # last toward 0
    examples = out.tables["text_examples"]
    assert set(examples.groupby("toward_class")["score"].first().items()) == {
        ("1", "logit(1)"),
        ("0", "-logit(1)"),
    }
    assert any("toward class 0: -logit(1) = +" in n for n in out.notes if n.startswith("example"))


def test_punctuation_share_is_reported_not_hidden(manifest: Path, vocab: Any) -> None:
    """Known answer: a model keyed on '.' (value 3 per full stop) puts most of the text
    attribution on punctuation, which the word ranking leaves out; the share and a note
    report it. The counterpart keyed on a word puts little there."""
    shares = {}
    for word in (".", "portable"):
        ctx = make_context(config_for(manifest), keyed_model(vocab, word, value=3.0))
        out = quick(tabular=False, shares=False, n_examples=0).run(ctx)
        shares[word] = out.metrics["text.punctuation_share"]
        if word == ".":
            assert "." not in set(out.tables["word_ranking"]["word"])
            note = next(n for n in out.notes if n.startswith("text: punctuation carries"))
            assert "'.' " in note and "(mean +" in note
    assert shares["."].value > 0.8 and shares["."].ci_low > 0.7
    assert shares["portable"].value < 0.1


def test_beeswarm_draws_missing_values_apart_from_the_colour_scale(portable_run: Any) -> None:
    """lab_b is missing in every 7th row: those points are hollow black rings with a legend
    entry, not a grey that reads as the middle of the colour scale."""
    from matplotlib.colors import to_rgba

    ctx, out = portable_run
    ax = out.figures["tabular_beeswarm"].axes[0]
    legend = ax.get_legend()
    assert legend is not None
    (label,) = [t.get_text() for t in legend.get_texts()]
    shown = int(ctx.dataset.tabular_missing.numpy()[:, :2].any(1).sum())
    assert label.startswith("missing value (n=") and shown > 0
    rings = [c for c in ax.collections if len(c.get_offsets()) and not len(c.get_facecolors())]
    assert rings and all(tuple(e) == to_rgba("black") for c in rings for e in c.get_edgecolors())


# --------------------------------------------------------------------------- multilabel

MULTILABEL = {"columns": ["y0", "y1"], "kind": "multilabel"}


def multilabel_manifest(manifest: Path) -> Path:
    """The toy manifest with a two-label target: y0 = label, y1 = the report says "clear"."""
    frame = pd.read_csv(manifest)
    frame["y0"] = frame["label"]
    frame["y1"] = frame["report"].fillna("").str.contains("clear").astype(int)
    path = manifest.with_name("manifest_multilabel.csv")
    frame.to_csv(path, index=False)
    return path


class TwoLabels(nn.Module):
    """Two additive label logits: ``logit_j = (2-d bag of words)_j + lab_j - 1.5 + 0.1 *
    brightness``. Label y0 rises by 2 per "opacity", y1 by 2 per "clear"; y0 reads lab_a,
    y1 lab_b. IG of a word toward label j is exactly its embedding's column j."""

    def __init__(self, vocab: Any) -> None:
        super().__init__()
        self.img_enc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.img_head = nn.Linear(1, 2, bias=False)
        self.text_enc = BagOfWords(len(vocab), dim=2)
        self.tab_enc = nn.Identity()
        self.tab_head = nn.Linear(2, 2)
        with torch.no_grad():
            self.img_head.weight.fill_(0.1)
            emb = self.text_enc.word_embeddings.weight
            emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
            emb[:5] = 0.0
            emb[vocab.convert_tokens_to_ids("opacity")] = torch.tensor([2.0, 0.0])
            emb[vocab.convert_tokens_to_ids("clear")] = torch.tensor([0.0, 2.0])
            self.tab_head.weight.copy_(torch.eye(2))
            self.tab_head.bias.fill_(-1.5)

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tabular: torch.Tensor,
    ) -> torch.Tensor:
        out = self.img_head(self.img_enc(image)) + self.text_enc(input_ids, attention_mask)
        return out + self.tab_head(self.tab_enc(tabular))


@pytest.fixture(scope="module")
def multilabel_ctx(manifest: Path, vocab: Any) -> AuditContext:
    cfg = config_for(multilabel_manifest(manifest), target=MULTILABEL)
    return make_context(cfg, TwoLabels(vocab))


def test_multilabel_ranks_every_report_for_every_label(multilabel_ctx: AuditContext) -> None:
    """Known answer: "opacity" tops y0's ranking at exactly +2 and "clear" tops y1's, each
    label ranked over every attributed report -- the all-negative ones included (every
    logit < 0), which an arg-max ranking would file under one label -- so a word's count
    is the number of reports it occurs in, for both labels and both directions."""
    import re

    ctx = multilabel_ctx
    out = quick(tabular=False, shares=False, top_words=1000).run(ctx)
    assert out.notes[0].startswith("multilabel target: each of the 2 label columns (y0, y1)")
    assert out.metrics["text.completeness_error"] < 1e-5
    ranking = out.tables["word_ranking"]
    assert set(ranking["class"]) == {"y0", "not y0", "y1", "not y1"}
    by = ranking.set_index(["class", "word"])
    for label, word in (("y0", "opacity"), ("y1", "clear")):
        top = ranking[ranking["class"] == label].iloc[0]
        assert top["word"] == word
        assert top["mean_attribution"] == pytest.approx(2.0, abs=1e-4)
        assert top["direction"] == f"toward {label}: logit({label})"
        down = by.loc[(f"not {label}", word)]
        assert down["mean_attribution"] == pytest.approx(-2.0, abs=1e-4)
        assert down["logit_attribution"] == pytest.approx(2.0, abs=1e-4)
        assert down["direction"] == f"toward not {label}: -logit({label})"
        assert down["rank"] == ranking[ranking["class"] == f"not {label}"]["rank"].max()
    # every report counts for every label
    texts = [t for t in ctx.dataset.texts if re.search(r"[a-z]", t)]
    logits = ctx.cache.sweep().logits[[bool(re.search(r"[a-z]", t)) for t in ctx.dataset.texts]]
    assert (logits < 0).all(1).sum() >= 10  # measured 27 of 72 reports: no label predicted
    assert (logits > 0).all(1).sum() >= 1  # measured 4: both labels predicted
    for row in ranking.itertuples():
        docs = sum(row.word in re.findall(r"[a-z]+", t.lower()) for t in texts)
        assert row.count == docs, (row.word, row.count, docs)
    tokens = out.tables["text_token_attributions"]
    assert set(tokens["score"]) == {"logit(y0)", "logit(y1)"}
    assert {"text_attribution_sum.y0", "text_attribution_sum.y1"} <= set(out.per_sample.columns)
    assert out.metrics["text.top_words.y1"].startswith("clear")
    assert out.metrics["text.top_words.y0"].startswith("opacity")
    assert not ranking["direction"].str.contains("predicted").any()
    examples = out.tables["text_examples"]
    assert set(examples["score"]) <= {"logit(y0)", "-logit(y0)", "logit(y1)", "-logit(y1)"}
    assert ctx.adapter.hook_count() == 0


@pytest.mark.parametrize(("target_class", "lab"), [(0, "lab_a"), (1, "lab_b")])
def test_multilabel_labs_and_shares_explain_the_chosen_label(
    multilabel_ctx: AuditContext, target_class: int, lab: str
) -> None:
    """Known answer: y0 reads lab_a only and y1 lab_b only, so the SHAP ranking follows
    ``target_class``; the notes name the label explained."""
    out = quick(text=False, target_class=target_class).run(multilabel_ctx)
    assert out.metrics["tabular.top_feature"] == lab
    name = f"y{target_class}"
    explained = f"the logit of label {name} (label column {target_class})"
    assert f"tabular: SHAP values explain {explained}" in out.notes
    assert f"shares: IG and coalition Shapley of {explained}" in out.notes
    assert out.metrics["shares.completeness_error"] < 1e-5
    assert out.metrics["shares.max_abs_diff_vs_ablation"] < 1e-4


def test_multilabel_target_class_out_of_range_is_an_error(multilabel_ctx: AuditContext) -> None:
    with pytest.raises(ValueError, match="target_class=2: the model has 2 label columns"):
        quick(text=False, shares=False, target_class=2).run(multilabel_ctx)


# --------------------------------------------------------------------------- bring your own


class OwnText(nn.Module):
    """A user's report model, loaded through ``model.factory``: its own token embedding and
    a second ``nn.Embedding`` (a per-report bucket of the text length) that does not read
    the ids, so only watching a forward tells which one is the token embedding."""

    def __init__(self, vocab: int, words: dict[int, float] | None = None) -> None:
        super().__init__()
        self.length = nn.Embedding(32, 1)
        self.tokens = nn.Embedding(vocab, 1, padding_idx=0)
        with torch.no_grad():
            self.length.weight.zero_()
            self.tokens.weight.mul_(0.05)
            for t, v in (words or {}).items():
                self.tokens.weight[t] = v

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[..., None].float()
        n = attention_mask.sum(1).clamp(max=31).long()
        return (self.tokens(input_ids) * mask).sum(1) + self.length(n)


class BagText(nn.Module):
    """A report model whose token embedding is an ``nn.EmbeddingBag``: (B, L) ids with the
    attention mask as per-sample weights, or flat ids with offsets (``flat=True``)."""

    def __init__(self, vocab: int, words: dict[int, float], flat: bool = False) -> None:
        super().__init__()
        self.flat = flat
        self.bag = nn.EmbeddingBag(vocab, 1, mode="sum", padding_idx=0)
        with torch.no_grad():
            self.bag.weight.mul_(0.05)
            for t, v in words.items():
                self.bag.weight[t] = v

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.flat:
            return self.bag(input_ids, per_sample_weights=attention_mask.float())
        lengths = attention_mask.sum(1)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        return self.bag(input_ids[attention_mask.bool()], offsets)


def build_own_text(vocab: int, word: int) -> OwnText:
    torch.manual_seed(0)
    return OwnText(vocab, {word: 2.0})


def build_bag_text(vocab: int, word: int, flat: bool = False) -> BagText:
    torch.manual_seed(0)
    return BagText(vocab, {word: 2.0}, flat)


def build_hf_bert(vocab: int) -> nn.Module:
    """A Hugging Face model as the whole model (a tiny BERT classifier, no download)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=1,
    )
    return BertForSequenceClassification(cfg)


def byo_context(manifest: Path, factory: str, layers: dict[str, str] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    """Report-only data and a factory model, loaded as ``mmaudit run`` loads it: detection
    at load, then on the first batch."""
    from mmaudit.engine.config import ModelConfig
    from mmaudit.engine.loading import load_model

    cfg = config_for(manifest, image=None, tabular=None)
    cfg.model = ModelConfig.model_validate(
        {
            "factory": f"test_attribution:{factory}",
            "kwargs": kw,
            "python_path": [str(Path(__file__).parent)],
            "layers": layers or {},
        }
    )
    ds = AuditDataset(cfg.data, cfg.runtime)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    adapter.detect_on_batch(next(iter(ds.batches(4))))
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


def test_byo_models_get_report_words_attributed(manifest: Path, vocab: Any) -> None:
    """No model.layers at all: the token embeddings are found (the one reading the ids of a
    hand-written model with two embeddings; a Hugging Face model's input embeddings; an
    EmbeddingBag over (B, L) ids) and the planted word is attributed, exactly where the
    model is additive."""
    word = vocab.convert_tokens_to_ids("portable")
    own = byo_context(manifest, "build_own_text", vocab=len(vocab), word=word)
    assert own.adapter.detected["text_embeddings"] == "tokens"
    bag = byo_context(manifest, "build_bag_text", vocab=len(vocab), word=word)
    assert bag.adapter.detected["text_embeddings"] == "bag"
    for ctx in (own, bag):
        out = quick().run(ctx)
        assert not any(n.startswith("text: skipped") for n in out.notes)
        top = out.tables["word_ranking"].iloc[0]
        assert (top["word"], top["mean_attribution"]) == ("portable", pytest.approx(2.0, abs=1e-4))
        assert out.metrics["text.completeness_error"] < 1e-5
        assert ctx.adapter.hook_count() == 0
        assert isinstance(ctx.adapter.get("text_embeddings"), (nn.Embedding, nn.EmbeddingBag))

    hf = byo_context(manifest, "build_hf_bert", vocab=len(vocab))
    assert hf.adapter.detected["text_embeddings"] == "bert.embeddings"
    out = quick(ig_steps=16).run(hf)
    assert not any(n.startswith("text: skipped") for n in out.notes)
    assert out.metrics["text.n_samples"] > 0 and len(out.tables["word_ranking"]) > 0
    assert out.metrics["text.completeness_error"] < 0.05


def test_embedding_bag_over_flat_ids_is_a_noted_skip(manifest: Path, vocab: Any) -> None:
    """Flat ids with offsets: the bag sums tokens it cannot place in the report, so the word
    part is not run, with that reason in the notes, and the check does not raise."""
    word = vocab.convert_tokens_to_ids("portable")
    ctx = byo_context(manifest, "build_bag_text", vocab=len(vocab), word=word, flat=True)
    assert ctx.adapter.detected["text_embeddings"] == "bag"
    check = quick()
    reason = check.missing_requirements(ctx)
    assert reason is not None and "nn.EmbeddingBag fed flat token ids with offsets" in reason
    assert reason.startswith("nothing to attribute: text: model.layers.text_embeddings")
    # run on its own (as when labs remain to attribute): a note with the reason, no raise
    out = check.run(ctx)
    notes = [n for n in out.notes if n.startswith("text: skipped: ")]
    assert notes and "sums tokens before any layer IG can hook" in notes[0]
    assert "word_ranking" not in out.tables and ctx.adapter.hook_count() == 0


# --------------------------------------------------------------------------- budget, cap, 0/0


class IgnoresText(Additive):
    """Reads the report and cancels it: ``(image + 1000 t) - 1000 t``. The score moves by
    float round-off only, so IG's completeness ratio is noise over noise (0/0)."""

    def forward(self, image: torch.Tensor, input_ids: Any = None, attention_mask: Any = None,
                tabular: Any = None) -> torch.Tensor:  # fmt: skip
        out = self.img_head(self.img_enc(image))
        t = 1000.0 * self.text_enc(input_ids, attention_mask)
        return (out + t) - t + self.tab_head(self.tab_enc(tabular))


class CurvedText(Additive):
    """The report enters as ``3 sin(3 t)``: two path points cannot integrate it."""

    def forward(self, image: torch.Tensor, input_ids: Any = None, attention_mask: Any = None,
                tabular: Any = None) -> torch.Tensor:  # fmt: skip
        out = self.img_head(self.img_enc(image))
        t = self.text_enc(input_ids, attention_mask)
        return out + 3.0 * torch.sin(3.0 * t) + self.tab_head(self.tab_enc(tabular))


def test_ignored_reports_give_a_note_not_a_convergence_warning(manifest: Path, vocab: Any) -> None:
    model = IgnoresText(
        len(vocab), {vocab.convert_tokens_to_ids("portable"): 2.0}, [1.0, -0.5], [0.3, 0.0]
    )
    ctx = make_context(config_for(manifest), model)
    out = quick(tabular=False, shares=False).run(ctx)
    change = out.per_sample["text_score_change"].dropna().to_numpy()
    assert np.abs(change).max() > 0  # round-off: the ratio used to be noise over noise
    assert np.isnan(out.metrics["text.completeness_error"])
    findings = judge("attribution", out.metrics, AttributionCheck.default_thresholds)
    assert not [f for f in findings if f.rule == "ig_not_converged"]
    assert any("0/0" in n and "not a convergence problem" in n for n in out.notes)


def test_unconverged_text_ig_still_warns(manifest: Path, vocab: Any) -> None:
    model = CurvedText(
        len(vocab), {vocab.convert_tokens_to_ids("portable"): 2.0}, [1.0, -0.5], [0.3, 0.0]
    )
    ctx = make_context(config_for(manifest), model)
    out = quick(tabular=False, shares=False, ig_steps=2).run(ctx)
    assert out.metrics["text.completeness_error"] > 0.05
    findings = judge("attribution", out.metrics, AttributionCheck.default_thresholds)
    assert [f.severity for f in findings if f.rule == "ig_not_converged"] == ["warn"]
    assert not any("0/0" in n for n in out.notes)


def test_text_and_share_ig_within_a_tight_memory_budget_equal_one_pass(
    manifest: Path, vocab: Any, portable_run: Any
) -> None:
    _, whole = portable_run
    cfg = config_for(manifest)
    cfg.runtime.memory_budget_mb = 0.002  # ~2 KB: a few rows per forward/backward
    tight = quick().run(make_context(cfg, keyed_model(vocab, "portable")))
    note = next(n for n in tight.notes if n.startswith("memory:"))
    assert "memory_budget_mb = 0.002 MB" in note and "text IG" in note
    assert "modality-share IG" in note
    rows = int(note.split("text IG: ")[1].split(" rows per")[0].split("-> ")[1])
    assert rows < 32 * 8  # fewer rows than one batch x the path points per pass
    for col in ("text_attribution_sum", "share.text", "share.image"):
        a = whole.per_sample[col].to_numpy(dtype=float)
        b = tight.per_sample[col].to_numpy(dtype=float)
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5)
    wt = whole.tables["text_token_attributions"]["attribution"].to_numpy()
    tt = tight.tables["text_token_attributions"]["attribution"].to_numpy()
    np.testing.assert_allclose(tt, wt, atol=1e-6)


def test_stratified_cap_keeps_every_cell_in_proportion() -> None:
    from mmaudit.checks.attribution.rows import stratified_cap

    rows = np.arange(1000)
    # cells of 600, 300, 90 and 10 rows
    strata = np.array(["0|A"] * 600 + ["1|A"] * 300 + ["0|B"] * 90 + ["1|B"] * 10)
    picked = stratified_cap(rows, 100, strata, np.random.default_rng(0))
    assert len(picked) == 100 and len(set(picked)) == 100
    assert np.all(np.diff(picked) > 0)
    counts = {k: int((strata[picked] == k).sum()) for k in ("0|A", "1|A", "0|B", "1|B")}
    assert counts == {"0|A": 60, "1|A": 30, "0|B": 9, "1|B": 1}
    tiny = stratified_cap(rows, 4, strata, np.random.default_rng(0))
    assert sorted(strata[tiny]) == ["0|A", "0|B", "1|A", "1|B"]  # one per cell
    assert stratified_cap(rows, None, strata, np.random.default_rng(0)) is rows


def test_text_cap_draws_by_label_and_site_and_says_so(manifest: Path, vocab: Any) -> None:
    ctx = make_context(config_for(manifest), keyed_model(vocab, "portable"))
    out = quick(tabular=False, shares=False, max_text_samples=20).run(ctx)
    note = next(n for n in out.notes if n.startswith("text: IG on 20 of"))
    assert "stratified by label x site" in note and "(4 of 4 cells represented)" in note
    rows = out.per_sample["text_attribution_sum"].notna().to_numpy()
    eligible = ctx.dataset.present[:, 1] & (np.array([bool(t) for t in ctx.dataset.texts]))
    attrs = ctx.dataset.attributes["site"].to_numpy().astype(str)
    label = np.asarray(ctx.dataset.target).astype(str)
    cells = np.char.add(label, attrs)
    for c in np.unique(cells[eligible]):
        share = (cells[rows] == c).mean()
        assert share == pytest.approx((cells[eligible] == c).mean(), abs=0.05 + 1 / 20)
