"""Check ``attention``: a planted grounding with a known answer, a trained built-in
attention-fusion model on the sample, and a clear skip for a model without attention.

The planted model's words are their own attention queries and its keys are one-hot region
codes, so "consolidation" attends to a region inside the ROI and "opacity" to the corner:
their ROI shares are ~1 and ~0, and only "opacity" raises the finding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_attribution import MULTILABEL, config_for, multilabel_manifest, write_text_dataset
from torch import nn

from mmaudit.checks.attention import AttentionCheck
from mmaudit.checks.contract import AuditContext
from mmaudit.checks.findings import judge
from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.cache import InferenceCache
from mmaudit.engine.data import AuditDataset
from mmaudit.methods.attention_capture import Captured

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Grounded(nn.Module):
    """Text tokens attend to 16 image regions (a 4 x 4 grid) with planted preferences."""

    def __init__(self, vocab: int, to_roi: list[int], to_corner: list[int]) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, 16)
        self.attn = nn.MultiheadAttention(16, 1, batch_first=True)
        self.head = nn.Linear(16, 1)
        with torch.no_grad():
            self.word.weight.zero_()
            for t in to_roi:
                self.word.weight[t, 5] = 40.0  # region (1, 1): inside the ROI
            for t in to_corner:
                self.word.weight[t, 0] = 40.0  # region (0, 0): the corner
            self.attn.in_proj_weight.copy_(torch.eye(16).repeat(3, 1))
            self.attn.in_proj_bias.zero_()
            self.attn.out_proj.weight.copy_(torch.eye(16))
            self.attn.out_proj.bias.zero_()
            self.head.weight.fill_(1.0)
            self.head.bias.fill_(5.0)  # every sample predicted positive

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        b = image.shape[0]
        regions = F.adaptive_avg_pool2d(image, 4).flatten(1)
        keys = torch.eye(16).expand(b, 16, 16) + 0.0 * regions[..., None]
        out, _ = self.attn(self.word(input_ids), keys, keys, need_weights=False)
        pooled = (out * attention_mask[..., None]).sum(1)
        return self.head(pooled) + regions.mean(1, keepdim=True)


def text_image_context(
    model: torch.nn.Module, cfg: Any, ds: AuditDataset, layers: dict[str, str] | None = None
) -> AuditContext:
    """An audit context for a model reading image and report (input_ids / attention_mask)."""
    adapter = ModelAdapter(
        model.eval(),
        source="test",
        modalities=ds.modalities,
        keywords={"image": "image", "text": "input_ids", "text_mask": "attention_mask"},
        layers=layers or {},
        detected={},
        device=torch.device("cpu"),
    )
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> AuditContext:
    from transformers import AutoTokenizer

    manifest = write_text_dataset(tmp_path_factory.mktemp("attdata"))
    cfg = config_for(manifest)
    cfg.data.tabular = None
    ds = AuditDataset(cfg.data, cfg.runtime)
    tok = AutoTokenizer.from_pretrained(str(ROOT / "sample_data" / "tokenizer"))
    ids = tok.convert_tokens_to_ids
    return text_image_context(Grounded(len(tok), [ids("consolidation")], [ids("opacity")]), cfg, ds)


@pytest.mark.parametrize("relevancy", [True, False])
def test_planted_grounding_is_recovered(planted: AuditContext, relevancy: bool) -> None:
    params = AttentionCheck.Params(
        n_boot=100, min_count=3, relevancy=relevancy, clinical_words=["opacity", "consolidation"]
    )
    check = AttentionCheck(params)
    assert check.missing_requirements(planted) is None
    out = check.run(planted)
    m = out.metrics
    assert m["attention.relevancy"] == int(relevancy)
    assert m["attention.row_sum_error"] < 1e-5
    assert m["attention.roi_chance"] == pytest.approx(0.25)
    assert m["attention.clinical_roi_share.consolidation"].value > 0.95
    assert m["attention.clinical_roi_share.opacity"].value < 0.05
    if not relevancy:  # a word with no query attends uniformly: the chance share (which is
        # "mostly outside" too: a clinical word that grounds nowhere is also flagged)
        assert m["attention.roi_share.lungs"].value == pytest.approx(0.25, abs=0.01)
    findings = judge("attention", m, AttentionCheck.default_thresholds)
    assert [f.metric for f in findings] == ["attention.clinical_roi_share.opacity"]
    assert planted.adapter.hook_count() == 0
    assert any(("relevancy" if relevancy else "raw attention") in n for n in out.notes)
    assert any("4 x 4 grid" in n for n in out.notes)
    assert "attention_examples" in out.private
    table = out.tables["word_regions"].set_index("word")
    assert table.loc["opacity", "peak_region"] == 0
    assert table.loc["consolidation", "peak_region"] == 5


# --------------------------------------------------------------------------- the sample


@pytest.fixture(scope="module")
def sample_attention_ctx(tmp_path_factory: pytest.TempPathFactory) -> AuditContext:
    """The sample (96 test rows) and a built-in attention-fusion model trained on them for a
    few steps (mechanics, not a good model: the grounding is not expected to be right)."""
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model
    from mmaudit.engine.models import (
        ArchitectureSpec,
        build_model,
        save_checkpoint,
        tiny_image_spec,
        tiny_text_spec,
    )

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.max_samples = 96
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    torch.manual_seed(0)
    spec = ArchitectureSpec(
        modalities=["image", "text", "tabular"],
        image=tiny_image_spec(64),
        text=tiny_text_spec(len(ds.tokenizer)),
        tabular={"n_features": 5, "hidden": [16]},
        dim=32,
        fusion="attention",
        missing_tokens=True,
    )
    spec.text.max_length = 40  # type: ignore[union-attr]
    model = build_model(spec)
    data = ds.collate([ds[i] for i in range(len(ds))])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(25):
        b = data.select(torch.randint(0, len(ds), (32,), generator=g))
        logits = model(
            image=b.image,
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            tabular=b.tabular,
            present=b.present,
        )
        loss = F.binary_cross_entropy_with_logits(logits[:, 0], b.target.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("attention_ckpt")
    save_checkpoint(model.eval(), spec, folder)
    cfg.model.checkpoint = folder
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


def test_builtin_attention_fusion_on_the_sample(sample_attention_ctx: AuditContext) -> None:
    ctx = sample_attention_ctx
    check = AttentionCheck(AttentionCheck.Params(n_boot=100, n_examples=2))
    assert check.missing_requirements(ctx) is None
    first = check.run(ctx)
    m = first.metrics
    assert m["attention.relevancy"] == 1  # gradients reached the fusion weights
    assert "relevancy carried through 2 text self-attention layers" in first.notes
    assert m["attention.row_sum_error"] < 1e-5
    assert m["attention.n_samples"] > 80
    assert 0 < m["attention.roi_chance"] < 1
    clinical = [k for k in m if k.startswith("attention.clinical_roi_share.")]
    assert {"attention.clinical_roi_share.pneumonia", "attention.clinical_roi_share.lungs"} <= set(
        clinical
    )
    for k in clinical:
        assert 0.0 <= m[k].value <= 1.0
    assert ctx.adapter.hook_count() == 0
    assert ctx.adapter.module.text_encoder.backbone.config._attn_implementation == "sdpa"
    assert set(first.figures) == {"attention_word_maps", "attention_examples"}
    raw = AttentionCheck(AttentionCheck.Params(n_boot=100, relevancy=False)).run(ctx)
    assert raw.metrics["attention.relevancy"] == 0
    again = check.run(ctx)
    from mmaudit.report.document import json_safe

    assert json_safe(again.metrics) == json_safe(first.metrics)
    for out in (first, raw, again):
        for fig in out.figures.values():
            import matplotlib.pyplot as plt

            plt.close(fig)


def test_model_without_attention_is_skipped_with_the_reason() -> None:
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.max_samples = 16
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    ctx = AuditContext(
        config=cfg, dataset=ds, adapter=adapter, cache=InferenceCache(adapter, ds), seed=0
    )
    reason = AttentionCheck(AttentionCheck.Params()).missing_requirements(ctx)
    assert reason is not None and reason.startswith("the model has no attention to capture")
    assert ctx.adapter.hook_count() == 0


def test_hf_cross_attention_inside_the_text_encoder_through_the_check(
    planted: AuditContext,
) -> None:
    """BLIP / ALBEF layout (tiny BERT with add_cross_attention, no download): the check
    finds both cross layers, aggregates them by relevancy through the self layers, and
    leaves neither hooks nor the eager kernel behind."""
    from test_attention_capture import CrossInsideText

    torch.manual_seed(0)
    model = CrossInsideText(vocab=len(planted.dataset.tokenizer))
    ctx = text_image_context(
        model,
        planted.config,
        planted.dataset,
        layers={"image": "image_encoder", "text": "text_encoder"},
    )
    check = AttentionCheck(AttentionCheck.Params(n_boot=100, min_count=3, n_examples=1))
    assert check.missing_requirements(ctx) is None
    out = check.run(ctx)
    assert out.metrics["attention.relevancy"] == 1
    assert out.metrics["attention.row_sum_error"] < 1e-5
    assert out.metrics["attention.image_share"].value == pytest.approx(1.0, abs=1e-5)
    assert "relevancy carried through 2 text self-attention layers" in out.notes
    assert any("2 cross-attention layers aggregated" in n for n in out.notes)
    assert any("2 layers (text_encoder.encoder.layer.0" in n for n in out.notes)
    assert ctx.adapter.hook_count() == 0
    assert model.text_encoder.config._attn_implementation != "eager"
    one = AttentionCheck(AttentionCheck.Params(n_boot=100, min_count=3, layer=0)).run(ctx)
    assert any("cross-attention layer 0 of 2 analysed" in n for n in one.notes)
    import matplotlib.pyplot as plt

    plt.close("all")


class GroundedBesideUnusedCross(nn.Module):
    """The planted fusion beside a BERT text encoder built with ``add_cross_attention``
    but run text-only (its output does not reach the score), registered first as in
    BLIP-style models: the fusion is analysed, not the idle cross layers."""

    def __init__(self, vocab: int, to_roi: list[int], to_corner: list[int]) -> None:
        super().__init__()
        from test_attention_capture import tiny_bert_config
        from transformers import BertModel

        cfg = tiny_bert_config(is_decoder=True, add_cross_attention=True, vocab_size=vocab)
        self.text_encoder = BertModel(cfg, add_pooling_layer=False)
        self.fusion = Grounded(vocab, to_roi, to_corner)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        unused = 0.0 * text.last_hidden_state.sum((1, 2))[:, None]
        return self.fusion(image, input_ids, attention_mask) + unused


def test_unused_cross_layers_in_the_text_encoder_do_not_displace_the_fusion(
    planted: AuditContext,
) -> None:

    tok = planted.dataset.tokenizer
    ids = tok.convert_tokens_to_ids
    torch.manual_seed(0)
    model = GroundedBesideUnusedCross(len(tok), [ids("consolidation")], [ids("opacity")])
    ctx = text_image_context(
        model, planted.config, planted.dataset, layers={"text": "text_encoder"}
    )
    check = AttentionCheck(
        AttentionCheck.Params(n_boot=100, min_count=3, n_examples=0, relevancy=False)
    )
    assert check.missing_requirements(ctx) is None
    out = check.run(ctx)
    assert any("maps are raw attention weights of fusion.attn over" in n for n in out.notes)
    assert out.metrics["attention.clinical_roi_share.consolidation"].value > 0.95
    assert out.metrics["attention.clinical_roi_share.opacity"].value < 0.05
    assert ctx.adapter.hook_count() == 0


def test_layers_that_did_not_run_as_text_to_image_are_named() -> None:
    w = torch.full((2, 1, 5, 4), 0.25)
    store = {
        "ran": [Captured(w, None)],
        "idle": [],
        "image_side": [Captured(torch.full((2, 1, 4, 5), 0.2), None)],
    }
    got = AttentionCheck._text_image_layers(store, ["ran", "idle", "image_side"], 5)
    assert got == {
        "ran": None,
        "idle": "was not called during the forward pass",
        "image_side": "has 4 queries for 5 report tokens (not text -> image)",
    }


def test_reports_and_tokenizer_problems_skip_with_the_reason(planted: AuditContext) -> None:
    import copy

    check = AttentionCheck(AttentionCheck.Params())
    ds = planted.dataset
    no_text = copy.copy(planted)
    no_text.dataset = copy.copy(ds)
    no_text.dataset.present = ds.present.copy()
    no_text.dataset.present[:, ds.modalities.index("text")] = False
    assert check.missing_requirements(no_text) == (
        "no sample has both an image and a non-empty report"
    )
    unk = copy.copy(planted)
    unk.dataset = copy.copy(ds)
    ids = ds.input_ids.clone()
    ids[ds.attention_mask.bool() & (ids > 4)] = ds.tokenizer.unk_token_id
    unk.dataset.input_ids = ids
    reason = check.missing_requirements(unk)
    assert reason is not None and reason.startswith("the tokenizer maps 100% of report tokens")


class TwoLabelGrounded(Grounded):
    """No planted words (every token attends uniformly); label y0 reads the attention paid
    to region 5 (inside the ROI), label y1 the attention paid to region 0 (the corner);
    both predicted positive. Relevancy toward y0 therefore lies on region 5 for every word,
    toward y1 on region 0."""

    def __init__(self, vocab: int) -> None:
        super().__init__(vocab, [], [])
        self.head = nn.Linear(16, 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, 5] = 1.0
            self.head.weight[1, 0] = 1.0
            self.head.bias.fill_(5.0)


@pytest.mark.parametrize(("target_class", "roi_share"), [(0, 1.0), (1, 0.0)])
def test_multilabel_relevancy_follows_the_chosen_label(
    planted: AuditContext, target_class: int, roi_share: float
) -> None:
    """Known answer: the same maps land inside the ROI for y0 and on the corner for y1,
    and a note names the label whose logit the relevancy follows."""
    manifest = multilabel_manifest(Path(planted.config.data.manifest))
    cfg = config_for(manifest, target=MULTILABEL)
    cfg.data.tabular = None
    ds = AuditDataset(cfg.data, cfg.runtime)
    ctx = text_image_context(TwoLabelGrounded(len(ds.tokenizer)), cfg, ds)
    params = AttentionCheck.Params(
        n_boot=100,
        min_count=3,
        n_examples=0,
        clinical_words=["opacity", "consolidation"],
        target_class=target_class,
    )
    out = AttentionCheck(params).run(ctx)
    assert out.metrics["attention.relevancy"] == 1
    assert out.metrics["attention.roi_share.lungs"].value == pytest.approx(roi_share, abs=0.02)
    name = f"y{target_class}"
    assert (
        f"relevancy follows the gradient of the logit of label {name} (label column"
        f" {target_class}), negated where {name} is predicted negative (logit < 0)"
    ) in out.notes
    assert ctx.adapter.hook_count() == 0


class ModalityQuery(nn.Module):
    """Attention from one learned query over the image's 16 regions (a pooling by
    attention, as in modality-token fusion): it runs, but not from the report's tokens."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, 16)
        self.query = nn.Parameter(torch.ones(1, 1, 16))
        self.attn = nn.MultiheadAttention(16, 1, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        b = image.shape[0]
        regions = F.adaptive_avg_pool2d(image, 4).flatten(1)[..., None].expand(b, 16, 16)
        out, _ = self.attn(self.query.expand(b, -1, -1), regions, regions)
        text = (self.word(input_ids) * attention_mask[..., None]).mean(1)
        return self.head(out[:, 0] + text)


def test_attention_not_from_the_report_is_a_skip_with_the_reason(planted: AuditContext) -> None:
    """A model whose only attention pools the image from a learned query: nothing to map
    words onto regions, so the check skips and says why (it used to end in an error)."""
    model = ModalityQuery(len(planted.dataset.tokenizer))
    ctx = text_image_context(model, planted.config, planted.dataset)
    check = AttentionCheck(AttentionCheck.Params(n_boot=100, min_count=3))
    assert check.missing_requirements(ctx) is None  # found by its modules ...
    out = check.run(ctx)  # ... and ruled out by the first forward
    assert out.judged == 0 and out.metrics == {}
    assert out.skip_reason is not None
    assert out.skip_reason.startswith("no text -> image attention to analyse: attn has 1 queries")
    assert ctx.adapter.hook_count() == 0


def test_max_samples_draws_within_label_and_site_cells(
    planted: AuditContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmaudit.checks.attention as attention

    drawn: list[tuple[np.ndarray, np.ndarray]] = []
    original = attention.stratified_subset

    def spy(strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        picked = original(strata, n, rng)
        drawn.append((np.asarray(strata), picked))
        return picked

    monkeypatch.setattr(attention, "stratified_subset", spy)
    cap = 24
    params = AttentionCheck.Params(n_boot=50, min_count=2, relevancy=False, max_samples=cap)
    out = AttentionCheck(params).run(planted)
    ((strata, picked),) = drawn
    assert len(picked) == cap and out.metrics["attention.n_samples"] == cap
    # every key is label|site, and each cell keeps its share of the rows (largest remainders)
    assert all(k.count("|") == 1 for k in strata)
    keys, counts = np.unique(strata, return_counts=True)
    got = {k: int(np.sum(strata[picked] == k)) for k in keys}
    for k, c in zip(keys, counts, strict=True):
        assert abs(got[k] - cap * c / len(strata)) < 1.0 + 1e-9
    assert any(f"max_samples = {cap}, drawn within label x site cells" in c for c in out.coverage)
    import matplotlib.pyplot as plt

    plt.close("all")


def _cross_inside_text_ctx(planted: AuditContext, budget_mb: float | str) -> AuditContext:
    """The BLIP / ALBEF layout (tiny BERT with cross layers over an image encoder's regions)
    on the planted data, at ``budget_mb``."""
    import copy

    from test_attention_capture import CrossInsideText

    torch.manual_seed(0)
    model = CrossInsideText(vocab=len(planted.dataset.tokenizer))
    cfg = copy.deepcopy(planted.config)
    cfg.runtime.memory_budget_mb = budget_mb  # type: ignore[assignment]
    return text_image_context(
        model, cfg, planted.dataset, layers={"image": "image_encoder", "text": "text_encoder"}
    )


def test_the_relevancy_pass_fits_the_budget_with_the_same_maps(planted: AuditContext) -> None:
    """A budget of a few rows splits every batch into chunks (the note says how many rows);
    the word maps and their ROI shares are those of one pass over the whole batch."""
    params = AttentionCheck.Params(n_boot=100, min_count=3, n_examples=0)
    whole = AttentionCheck(params).run(_cross_inside_text_ctx(planted, 4096.0))
    tight_ctx = _cross_inside_text_ctx(planted, 0.05)
    tight = AttentionCheck(params).run(tight_ctx)
    (note,) = [n for n in tight.notes if n.startswith("memory:")]
    rows = int(note.split("-> ")[1].split(" rows")[0])
    assert "attention relevancy" in note and 1 <= rows < 32
    assert any("-> " in n and "attention relevancy" in n for n in whole.notes)
    for key, value in whole.metrics.items():
        got = tight.metrics[key]
        if hasattr(value, "value"):
            assert got.value == pytest.approx(value.value, abs=1e-5), key
        else:
            assert got == pytest.approx(value, abs=1e-5), key
    assert tight_ctx.adapter.hook_count() == 0
    import matplotlib.pyplot as plt

    plt.close("all")


def test_the_image_encoder_keeps_no_graph_during_relevancy(
    planted: AuditContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relevancy reads gradients of the attention weights, never of the image encoder, so its
    parameters take none during the pass (its activations are not kept for a backward) and
    get their flag back after; the maps are those of a pass that keeps its graph."""
    import contextlib

    import mmaudit.checks.attention as attention

    params = AttentionCheck.Params(n_boot=100, min_count=3, n_examples=0)
    ctx = _cross_inside_text_ctx(planted, "auto")
    encoder = ctx.adapter.module.image_encoder
    seen: list[bool] = []
    handle = encoder.register_forward_hook(lambda _m, _i, out: seen.append(out.requires_grad))
    frozen_run = AttentionCheck(params).run(ctx)
    handle.remove()
    assert seen and not any(seen)  # no graph through the image encoder
    assert all(q.requires_grad for q in encoder.parameters())  # restored

    monkeypatch.setattr(attention, "frozen", lambda *_a: contextlib.nullcontext())
    seen.clear()
    handle = encoder.register_forward_hook(lambda _m, _i, out: seen.append(out.requires_grad))
    kept = AttentionCheck(params).run(_cross_inside_text_ctx(planted, "auto"))
    handle.remove()
    for key, value in kept.metrics.items():
        got = frozen_run.metrics[key]
        if hasattr(value, "value"):
            assert got.value == pytest.approx(value.value, abs=1e-5), key
    import matplotlib.pyplot as plt

    plt.close("all")
