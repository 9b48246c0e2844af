"""Report-text attribution: which words of a report a prediction rests on.

What lives here (the checks ``attribution`` and ``attention`` share it):

* locating the token-embedding layer of a model (``find_text_embedding_layer``);
* the reference input of Integrated Gradients for text (``baseline_ids``: content
  tokens replaced by ``[PAD]``, special tokens kept, so the path only changes words);
* ``text_integrated_gradients``: per-token IG on that layer for one batch, with the
  other modalities held at their observed (cached) encoder outputs;
* word merging (``word_spans``): tokens -> words through the fast tokenizer's
  ``word_ids`` and offsets, or by joining ``##`` word pieces;
* ``SiteGivenLabel``, the data-driven half of "is this a non-clinical word": does a
  word (or a lab feature) tell the *site* apart among reports with the same *label*
  (the site shuffled within label classes; the checks Holm-correct across words). Not
  "site better than label", which a site tied to prevalence turns into a coin flip
  (see the class docstring);
* the default vocabularies: ``DEFAULT_STOPLIST`` (words that are never a clinical
  finding: institutions, workflow and template words) and ``CLINICAL_WORDS`` (chest
  findings and anatomy, used by the attention check).

Why words and not tokens: a WordPiece tokenizer splits rare words ("riverside" ->
"river", "##side"), and a reader reasons about words; token attributions of one word
are summed, which keeps IG's completeness.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter
from mmaudit.engine.data import Batch
from mmaudit.engine.errors import MmauditError
from mmaudit.engine.layer_detection import detect_text_embedding_layer
from mmaudit.methods.integrated_gradients import (
    Quadrature,
    ScoreFn,
    layer_integrated_gradients,
    substituted,
)
from mmaudit.methods.memory_budget import MemoryBudget
from mmaudit.methods.stats import Estimate, auroc

__all__ = [
    "BagInputError",
    "CLINICAL_WORDS",
    "PerTokenBag",
    "DEFAULT_STOPLIST",
    "association",
    "baseline_ids",
    "baseline_token_id",
    "content_mask",
    "find_text_embedding_layer",
    "is_word",
    "metric_key",
    "per_token_view",
    "SiteGivenLabel",
    "special_ids",
    "text_integrated_gradients",
    "text_layer_problem",
    "word_spans",
]

#: Words that are not clinical findings and have carried shortcuts in practice:
#: institutions and places, workflow, devices and report templates.
DEFAULT_STOPLIST: tuple[str, ...] = (
    "hospital",
    "clinic",
    "center",
    "centre",
    "institute",
    "department",
    "unit",
    "ward",
    "site",
    "performed",
    "dictated",
    "transcribed",
    "signed",
    "electronically",
    "reviewed",
    "attending",
    "resident",
    "radiologist",
    "technologist",
    "dr",
    "md",
    "scanner",
    "protocol",
    "accession",
    "portable",
    "comparison",
    "prior",
    "study",
    "exam",
    "examination",
    "obtained",
    "dated",
    "report",
    "preliminary",
    "final",
)

#: Chest-radiograph findings and anatomy: words whose attention should land in the lungs.
CLINICAL_WORDS: tuple[str, ...] = (
    "opacity",
    "opacities",
    "consolidation",
    "infiltrate",
    "infiltrates",
    "airspace",
    "pneumonia",
    "infection",
    "infectious",
    "effusion",
    "pneumothorax",
    "atelectasis",
    "edema",
    "nodule",
    "nodules",
    "mass",
    "lesion",
    "patchy",
    "hazy",
    "focal",
    "lung",
    "lungs",
    "lobe",
    "lingula",
    "apex",
    "base",
    "zone",
    "cardiomegaly",
    "fibrosis",
    "emphysema",
)

_WORD = re.compile(r"[0-9a-z]", re.IGNORECASE)


def is_word(word: str) -> bool:
    """True when ``word`` has a letter or digit (punctuation-only tokens are not ranked)."""
    return bool(_WORD.search(word))


def metric_key(word: str) -> str:
    """A word as a metric-name component: lowercase ``[a-z0-9_]`` only."""
    key = re.sub(r"[^0-9a-z]+", "_", word.lower()).strip("_")
    return key or "_"


# ----------------------------------------------------------------------------- layer


def find_text_embedding_layer(adapter: ModelAdapter) -> str | None:
    """Dotted path of the token-embedding layer IG interpolates, or None.

    ``model.layers.text_embeddings`` when configured or detected at load
    (:func:`mmaudit.engine.layer_detection.detect_text_embedding_layer`, or on the first batch by
    :meth:`~mmaudit.engine.adapter.ModelAdapter.detect_on_batch`); else the same static detection
    on this adapter (one built without ``load_model``). The built-in family gives
    ``text_encoder.backbone.embeddings``.
    """
    if "text_embeddings" in adapter.layers:
        return adapter.layers["text_embeddings"]
    if not adapter.supports_hooks:
        return None
    return detect_text_embedding_layer(adapter.module, adapter.layers.get("text"))


class BagInputError(MmauditError):
    """An ``nn.EmbeddingBag`` fed flat token ids with offsets: its tokens cannot be put back
    at their report positions, so they cannot be attributed one by one."""


class _Lookup(nn.Module):
    """The per-token half of an ``nn.EmbeddingBag``: ``(B, L)`` ids -> ``(B, L, D)`` rows of
    its weight. Its output is what report-word IG interpolates."""

    def __init__(self, bag: nn.EmbeddingBag) -> None:
        super().__init__()
        self.bag = [bag]  # a list: not a child, the PerTokenBag around it holds the bag

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bag = self.bag[0]
        return nn.functional.embedding(
            ids, bag.weight, None, bag.max_norm, bag.norm_type, bag.scale_grad_by_freq
        )


class PerTokenBag(nn.Module):
    """Stands in for an ``nn.EmbeddingBag`` during text IG: looks each token up (the child
    ``tokens``, whose per-token output IG substitutes) and pools the rows as the bag does
    (sum with ``per_sample_weights``, mean or max; ``padding_idx`` left out; an empty bag
    gives zeros). Why: the bag sums its tokens inside one kernel, so no layer output holds
    one vector per token; with the pooling spelled out, every token gets its own IG path
    from ``[PAD]`` and completeness still holds. Only ``(B, L)`` input (one bag per report)
    maps tokens back to report positions; flat ids with offsets raise
    :class:`BagInputError`.
    """

    def __init__(self, bag: nn.EmbeddingBag, where: str) -> None:
        super().__init__()
        self.mode = bag.mode
        self.padding_idx = bag.padding_idx
        self.where = where
        self.bag = bag  # keeps the model's parameters whole while this stands in
        self.tokens = _Lookup(bag)

    def forward(
        self,
        input: torch.Tensor,  # noqa: A002 - nn.EmbeddingBag's own keyword
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input.dim() != 2 or offsets is not None:
            raise BagInputError(
                f"model.layers.text_embeddings ('{self.where}') is an nn.EmbeddingBag fed"
                " flat token ids with offsets,"
                " which sums tokens before any layer IG can hook and loses their places in"
                " the report",
                hint="feed the bag (batch, length) ids, or name a per-token nn.Embedding in"
                " model.layers.text_embeddings",
            )
        rows = self.tokens(input)  # (B, L, D)
        keep = torch.ones_like(input, dtype=rows.dtype)
        if self.padding_idx is not None:
            keep = keep * (input != self.padding_idx).to(rows.dtype)
        if self.mode == "max":
            filled = rows.masked_fill(keep[..., None] == 0, float("-inf")).amax(1)
            return torch.where(torch.isinf(filled), torch.zeros_like(filled), filled)
        weight = keep if per_sample_weights is None else keep * per_sample_weights.to(rows.dtype)
        total = (rows * weight[..., None]).sum(1)
        if self.mode == "mean":
            return total / keep.sum(1, keepdim=True).clamp(min=1)
        return total


@contextlib.contextmanager
def per_token_view(adapter: ModelAdapter, layer: str) -> Iterator[str]:
    """The layer whose output holds one vector per token: ``layer`` itself, or, for an
    ``nn.EmbeddingBag``, ``<layer>.tokens`` of a :class:`PerTokenBag` put in its place
    until the context closes."""
    path = adapter.layers.get(layer, layer)
    module = adapter.module.get_submodule(path)
    if not isinstance(module, nn.EmbeddingBag):
        yield layer
        return
    adapter.module.set_submodule(path, PerTokenBag(module, path))
    try:
        yield f"{path}.tokens"
    finally:
        adapter.module.set_submodule(path, module)


def text_layer_problem(adapter: ModelAdapter, layer: str, batch: Batch) -> str | None:
    """Why IG cannot attribute tokens at ``layer`` on this model, or None: one no-grad
    forward of ``batch`` checks that the layer runs and gives one vector per token of the
    report, ``(B, L, ...)`` (a pooled or misnamed layer would be summed over the wrong
    axis); an ``nn.EmbeddingBag`` is looked at through :func:`per_token_view`."""
    assert batch.input_ids is not None
    batch = batch.to(adapter.device)
    where = f"model.layers.text_embeddings ('{adapter.layers.get(layer, layer)}')"
    with per_token_view(adapter, layer) as name:
        try:
            with torch.no_grad(), adapter.capture([name]) as store:
                adapter.logits(batch)
        except BagInputError as exc:
            return f"{exc}; {exc.hint}"
        out = store.get(name)
    if out is None:
        return f"{where} did not run when the model read a batch of reports"
    if tuple(out.shape[:2]) != tuple(batch.input_ids.shape):
        return (
            f"{where} gives shape {tuple(out.shape)}, not one vector per report token"
            f" {tuple(batch.input_ids.shape)}: name the token-embedding module (the"
            " nn.Embedding that reads input_ids) in model.layers.text_embeddings"
        )
    return None


# ----------------------------------------------------------------------------- inputs


def special_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokenizer's special tokens except [UNK] (a word, if an unknown one)."""
    ids = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    ids.discard(-1 if unk is None else int(unk))
    return sorted(ids)


def content_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: Any
) -> torch.Tensor:
    """Bool (B, L): real word tokens (attended, not [CLS]/[SEP]/[PAD]/...)."""
    mask = attention_mask.bool().clone()
    specials = special_ids(tokenizer)
    if specials:
        mask &= ~torch.isin(input_ids, torch.tensor(specials, device=input_ids.device))
    return mask


def baseline_token_id(tokenizer: Any, how: Literal["pad", "mask", "unk"]) -> int:
    """The id that replaces words in the IG reference input (0 when the tokenizer has none)."""
    value = getattr(tokenizer, f"{how}_token_id", None)
    return int(value) if value is not None else 0


def baseline_ids(input_ids: torch.Tensor, content: torch.Tensor, token_id: int) -> torch.Tensor:
    """The reference report: every content token replaced by ``token_id``, the rest kept."""
    return torch.where(content, torch.full_like(input_ids, token_id), input_ids)


# ----------------------------------------------------------------------------- IG


def text_integrated_gradients(
    adapter: ModelAdapter,
    batch: Batch,
    layer: str,
    score_fn: ScoreFn,
    content: torch.Tensor,
    token_id: int,
    *,
    n_steps: int = 32,
    steps_per_pass: int = 16,
    method: Quadrature = "gausslegendre",
    fixed: dict[str, torch.Tensor] | None = None,
    budget: MemoryBudget | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token IG for one batch: ``(attributions (B, L), F(x) (B,), F(baseline) (B,))``.

    Two no-grad forwards read the embedding-layer output of the report and of its
    reference (``baseline_ids``) and give the scores at both ends of the path; the
    quadrature then runs through :func:`layer_integrated_gradients` with the embedding
    layer substituted. ``fixed`` holds other layers (cached encoder outputs) constant.
    ``budget`` caps the reports x path points of one forward + backward (the pass is
    recorded as ``text IG``). Attributions are summed over the embedding dimension.
    """
    assert batch.input_ids is not None
    ref = batch.replace(input_ids=baseline_ids(batch.input_ids, content, token_id))
    supplies = {name: (lambda t=t: t) for name, t in (fixed or {}).items()}
    ends: list[tuple[torch.Tensor, torch.Tensor]] = []
    with per_token_view(adapter, layer) as layer:
        for b in (batch, ref):
            with (
                torch.no_grad(),
                adapter.capture([layer]) as store,
                substituted(adapter, supplies),
            ):
                score = score_fn(adapter.logits(b), b).float()
                ends.append((store[layer].float(), score))
        (x, fx), (base, fb) = ends
        attr = layer_integrated_gradients(
            adapter,
            batch,
            {layer: (x, base)},
            score_fn,
            n_steps=n_steps,
            steps_per_pass=steps_per_pass,
            method=method,
            fixed=fixed,
            budget=budget,
            pass_name="text IG",
        )[layer]
    per_token = attr.reshape(attr.shape[0], attr.shape[1], -1).sum(-1)
    return per_token * content.to(per_token.dtype), fx, fb


# ----------------------------------------------------------------------------- words


def word_spans(
    tokenizer: Any, texts: Sequence[str], input_ids: torch.Tensor, max_length: int
) -> list[list[tuple[str, list[int]]]]:
    """Per sample, its words in order as ``(word, token positions)``.

    With a fast tokenizer the reports are re-encoded exactly as the dataset encoded them
    (padding to ``max_length``, truncation) and grouped by ``word_ids``; the word is the
    lower-cased span of the original text (so an [UNK] word keeps its spelling). When
    the re-encoding does not reproduce ``input_ids`` (another tokenizer, a slow one),
    tokens are grouped by the ``##`` continuation prefix of WordPiece instead. Special
    and padding tokens belong to no word.
    """
    ids_np = input_ids.cpu().numpy()
    specials = set(special_ids(tokenizer))
    if getattr(tokenizer, "is_fast", False):
        try:
            enc = tokenizer(
                list(texts),
                padding="max_length",
                truncation=True,
                max_length=max_length,
                return_offsets_mapping=True,
            )
            same = np.array_equal(np.asarray(enc["input_ids"]), ids_np)
        except Exception:  # a tokenizer without offsets: fall back to word pieces
            same = False
        if same:
            out = []
            for i, text in enumerate(texts):
                words: dict[int, list[int]] = {}
                for pos, wid in enumerate(enc.word_ids(i)):
                    if wid is not None and int(ids_np[i, pos]) not in specials:
                        words.setdefault(wid, []).append(pos)
                offsets = enc["offset_mapping"][i]
                spans = []
                for positions in words.values():
                    start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
                    spans.append((text[start:end].lower(), positions))
                out.append(spans)
            return out
    return [_piece_words(tokenizer, row, specials) for row in ids_np]


def _piece_words(
    tokenizer: Any, row: np.ndarray, specials: set[int]
) -> list[tuple[str, list[int]]]:
    pieces = tokenizer.convert_ids_to_tokens([int(t) for t in row])
    spans: list[tuple[str, list[int]]] = []
    for pos, (tid, piece) in enumerate(zip(row, pieces, strict=True)):
        if int(tid) in specials:
            continue
        if piece.startswith("##") and spans:
            word, positions = spans[-1]
            spans[-1] = (word + piece[2:].lower(), [*positions, pos])
        else:
            spans.append((piece.lower().removeprefix("##"), [pos]))
    return spans


# ----------------------------------------------------------------------------- site test


def association(x: np.ndarray, y: np.ndarray) -> float:
    """How well ``x`` tells the classes of ``y`` apart: max over classes of |2 AUROC - 1|.

    For a 0/1 ``x`` (a word present or not) this is Youden's |TPR - FPR|; 0 means no
    information, 1 perfect separation. ``y`` may be 2-D (multilabel: max over labels).
    A 2-D ``x`` (several views of one feature, e.g. value and missingness) gives the max
    over its columns. NaN when ``y`` has one class.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y)
    if x.ndim == 2:
        values = [association(x[:, k], y) for k in range(x.shape[1])]
        values = [v for v in values if not np.isnan(v)]
        return max(values) if values else float("nan")
    if y.ndim == 2:
        values = [association(x, y[:, k]) for k in range(y.shape[1])]
        values = [v for v in values if not np.isnan(v)]
        return max(values) if values else float("nan")
    classes = np.unique(y)
    if len(classes) < 2:
        return float("nan")
    targets = classes[:1] if len(classes) == 2 else classes
    best = 0.0
    for c in targets:
        a = auroc((y == c).astype(int), x)
        if not np.isnan(a):
            best = max(best, abs(2.0 * a - 1.0))
    return best


class SiteGivenLabel:
    """Does a feature tell the site apart *among studies with the same label*?

    Statistic: within each label stratum, the association of ``x`` with the site
    (:func:`association`: max over site classes of |2 AUROC - 1|, mid-ranks for ties),
    averaged over strata weighted by their size. Null: the site shuffled within each label
    stratum ``n_permutations`` times (the same shuffles for every feature tested).

    Why not "associated with site more than with label": when the
    site is tied to prevalence -- the very situation a site shortcut exploits -- a
    site-coded column is associated with the label too, and the comparison becomes a coin
    flip. A genuinely clinical feature that differs between sites only because prevalence
    does shows no site association within a label class; a site-coded one still does.
    p-value: ``(1 + #null >= observed) / (1 + n)``, or, when no shuffle reaches the
    observed value, the upper normal tail of the null (so that Holm over many words is
    not floored at ``1 / (n + 1)``). Vectorised: x's within-stratum ranks do not move
    under the shuffles, so every AUROC of every shuffle is one matrix product.
    """

    def __init__(
        self, site: np.ndarray, label: np.ndarray, n_permutations: int = 1000, seed: int = 0
    ) -> None:
        site = np.asarray(site).astype(str)
        label = np.asarray(label)
        strata_key = np.array(["|".join(map(str, r)) for r in label]) if label.ndim == 2 else label
        rng = np.random.default_rng([seed, 7])
        self.n = len(site)
        self.n_permutations = n_permutations
        # per stratum: its rows, its weight and, per site class tested, the observed and the
        # shuffled membership indicators (n_permutations + 1, rows): row 0 is the observed
        self.strata: list[tuple[np.ndarray, float, list[tuple[np.ndarray, float]]]] = []
        for value in np.unique(strata_key):
            rows = np.flatnonzero(strata_key == value)
            classes = np.unique(site[rows])
            if len(classes) < 2:
                continue
            shuffled = np.stack(
                [site[rows]] + [rng.permutation(site[rows]) for _ in range(n_permutations)]
            )
            targets = classes[:1] if len(classes) == 2 else classes
            members = []
            for c in targets:
                ind = (shuffled == c).astype(np.float64)
                members.append((ind, float(ind[0].sum())))
            self.strata.append((rows, len(rows) / self.n, members))

    def test(self, x: np.ndarray) -> Estimate | None:
        """The statistic for feature ``x`` (n,) or (n, k: several views, max taken) with its
        permutation p-value; None when no label stratum holds two sites."""
        from scipy.stats import rankdata

        if not self.strata:
            return None
        x = np.asarray(x, dtype=float)
        x = x[:, None] if x.ndim == 1 else x
        x = np.nan_to_num(x)
        total = np.zeros(self.n_permutations + 1)
        weight = sum(w for _, w, _ in self.strata)
        for rows, w, members in self.strata:
            ranks = rankdata(x[rows], axis=0)  # (rows, k) mid-ranks, fixed under shuffles
            n_rows = len(rows)
            best = np.zeros(self.n_permutations + 1)
            for ind, n_c in members:
                n_other = n_rows - n_c
                if n_c == 0 or n_other == 0:
                    continue
                rank_sum = ind @ ranks  # (perms + 1, k)
                auc = (rank_sum - n_c * (n_c + 1) / 2) / (n_c * n_other)
                best = np.maximum(best, np.abs(2 * auc - 1).max(axis=1))
            total += w * best
        stat = total / weight
        observed, null = float(stat[0]), stat[1:]
        exceed = int(np.sum(null >= observed - 1e-12))
        if exceed:
            p = (1 + exceed) / (1 + len(null))
        else:
            sd = float(np.std(null, ddof=1))
            z = (observed - float(np.mean(null))) / sd if sd > 0 else np.inf
            p = 0.5 * math.erfc(z / math.sqrt(2)) if np.isfinite(z) else 0.0
        return Estimate(observed, None, None, self.n, float(p))
