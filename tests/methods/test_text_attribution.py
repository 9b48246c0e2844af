"""Word merging, embedding-layer detection and the site-within-label test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.methods.text_attribution import (
    SiteGivenLabel,
    association,
    baseline_ids,
    content_mask,
    find_text_embedding_layer,
    metric_key,
    word_spans,
)

TOKENIZER = Path(__file__).resolve().parents[2] / "sample_data" / "tokenizer"


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def _adapter(module: nn.Module, layers: dict[str, str]) -> ModelAdapter:
    return ModelAdapter(
        module,
        source="test",
        modalities=("text",),
        keywords={"text": "input_ids"},
        layers=layers,
        detected={},
        device=torch.device("cpu"),
    )


def test_embedding_layer_detection() -> None:
    from mmaudit.engine.models import ArchitectureSpec, build_model, tiny_text_spec

    builtin = build_model(ArchitectureSpec(modalities=["text"], text=tiny_text_spec(60), dim=8))
    ad = _adapter(builtin, builtin.default_layers())
    assert find_text_embedding_layer(ad) == "text_encoder.backbone.embeddings"

    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Embedding(10, 4))
            self.head = nn.Linear(4, 1)

    bare = Bare()
    assert find_text_embedding_layer(_adapter(bare, {"text": "enc"})) == "enc.0"
    assert find_text_embedding_layer(_adapter(bare, {})) is None
    named = _adapter(bare, {"text": "enc", "text_embeddings": "enc.0"})
    assert find_text_embedding_layer(named) == "enc.0"


def test_word_spans_merge_pieces_and_keep_unknown_words(tok) -> None:  # type: ignore[no-untyped-def]
    texts = ["Riverside hospital $5: patchy opacity.", ""]
    enc = tok(texts, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    spans = word_spans(tok, texts, enc["input_ids"], 24)
    words = [w for w, _ in spans[0]]
    assert words == ["riverside", "hospital", "$", "5", ":", "patchy", "opacity", "."]
    assert len(spans[0][0][1]) > 1  # "riverside" is several word pieces
    assert spans[1] == []
    # a mismatched re-encoding falls back to joining '##' pieces
    fallback = word_spans(tok, texts, enc["input_ids"], 30)
    assert [w for w, _ in fallback[0]][:2] == ["riverside", "hospital"]
    assert [p for _, p in fallback[0]] == [p for _, p in spans[0]]


def test_content_mask_and_baseline(tok) -> None:  # type: ignore[no-untyped-def]
    enc = tok(["no acute disease."], padding="max_length", max_length=10, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    content = content_mask(ids, mask, tok)
    assert content.sum().item() == 4  # no, acute, disease, .
    ref = baseline_ids(ids, content, tok.pad_token_id)
    assert ref[0, 0].item() == tok.cls_token_id
    assert (ref[content] == tok.pad_token_id).all()


def test_association_and_site_versus_label() -> None:
    rng = np.random.default_rng(0)
    n = 200
    site = np.repeat(["A", "B"], n // 2)
    label = (rng.random(n) < np.where(site == "B", 0.7, 0.3)).astype(int)
    site_word = (site == "B").astype(float)
    label_word = label.astype(float)
    assert association(site_word, site) == pytest.approx(1.0)
    assert association(rng.random(n), site) < 0.2
    assert association(np.column_stack([rng.random(n), site_word]), site) == pytest.approx(1.0)
    tester = SiteGivenLabel(site, label, n_permutations=300, seed=0)
    flagged = tester.test(site_word)
    assert flagged is not None and flagged.value > 0.9 and flagged.null_p < 0.01
    clinical = tester.test(label_word)  # constant within each label class: no site signal
    assert clinical is not None and clinical.value == 0.0 and clinical.null_p > 0.5


def test_metric_key() -> None:
    assert metric_key("X-ray") == "x_ray"
    assert metric_key("$") == "_"


def test_site_within_label_flags_a_site_coded_lab_not_a_clinical_one() -> None:
    """Site tied to prevalence (0.05 vs 0.95): a lab shifted by site is associated with the
    label almost as strongly as with the site; within each label class it still separates
    the sites. A clinical lab (shifted by the label only) differs between sites through
    prevalence alone and must stay quiet."""
    rng = np.random.default_rng(1)
    n = 600
    site = np.repeat(["A", "B"], n // 2)
    label = (rng.random(n) < np.where(site == "B", 0.95, 0.05)).astype(int)
    site_lab = rng.normal(0, 1, n) + 1.0 * (site == "B")
    clinical_lab = rng.normal(0, 1, n) + 1.0 * label
    tester = SiteGivenLabel(site, label, n_permutations=400, seed=0)
    coded = tester.test(site_lab)
    clinical = tester.test(clinical_lab)
    assert coded is not None and clinical is not None
    assert coded.null_p < 0.01 and clinical.null_p > 0.05
    # the statistic is the size-weighted within-label association
    manual = sum(
        (label == c).mean() * association(site_lab[label == c], site[label == c]) for c in (0, 1)
    )
    assert coded.value == pytest.approx(manual)
    # views of one feature: the max over columns; one site per stratum: no test
    both = tester.test(np.column_stack([clinical_lab, site_lab]))
    assert both is not None and both.value == pytest.approx(coded.value)
    assert SiteGivenLabel(np.repeat(["A"], 10), np.arange(10) % 2).test(np.arange(10.0)) is None


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_per_token_bag_pools_as_the_embedding_bag_does(mode: str) -> None:
    """The per-token stand-in reproduces nn.EmbeddingBag exactly (padding left out, empty
    bags zero, per-sample weights in sum mode), so IG through it attributes the real model."""
    from mmaudit.methods.text_attribution import PerTokenBag

    torch.manual_seed(0)
    for pad in (None, 0):
        bag = nn.EmbeddingBag(20, 5, mode=mode, padding_idx=pad)
        ids = torch.randint(1, 20, (4, 7))
        ids[0, :] = 0
        ids[1, 3:] = 0
        weights = torch.rand(4, 7) if mode == "sum" else None
        expected = bag(ids, per_sample_weights=weights)
        got = PerTokenBag(bag, "bag")(ids, per_sample_weights=weights)
        assert torch.allclose(got, expected, atol=1e-6)


def test_hf_input_embeddings_and_per_token_layer_problems(tok) -> None:  # type: ignore[no-untyped-def]
    """A Hugging Face model inside a user's model: its embeddings block is found through
    get_input_embeddings (also with a second nn.Embedding beside it); a layer that does not
    give one vector per token is refused with the reason, not attributed over wrong axes."""
    from transformers import BertConfig, BertModel

    from mmaudit.engine.data import Batch
    from mmaudit.methods.text_attribution import text_layer_problem

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = BertConfig(
                vocab_size=60,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=16,
                max_position_embeddings=16,
            )
            self.site = nn.Embedding(3, 8)
            self.encoder = BertModel(cfg)
            self.head = nn.Linear(8, 1)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(input_ids=input_ids).last_hidden_state[:, 0])

    model = Wrapped()
    ad = _adapter(model, {})
    assert find_text_embedding_layer(ad) == "encoder.embeddings"
    ids = torch.randint(5, 60, (3, 6))
    batch = Batch(
        index=torch.arange(3),
        present=torch.ones(3, 1, dtype=torch.bool),
        target=torch.zeros(3),
        input_ids=ids,
        modalities=("text",),
    )
    assert text_layer_problem(ad, "encoder.embeddings", batch) is None
    pooled = text_layer_problem(ad, "head", batch)
    assert pooled is not None and "not one vector per report token (3, 6)" in pooled
    unused = text_layer_problem(ad, "site", batch)
    assert unused is not None and "did not run" in unused
    assert ad.hook_count() == 0
