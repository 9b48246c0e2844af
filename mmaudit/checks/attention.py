"""Check ``attention``: which image regions the report's words attend to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from mmaudit.checks.contract import (
    AuditContext,
    Check,
    CheckOutput,
    Requirements,
    ThresholdRule,
    register,
)
from mmaudit.checks.findings import count_judged
from mmaudit.checks.plotting import literal_text, pyplot
from mmaudit.methods.attention_capture import (
    AttentionSource,
    Captured,
    capture_attention,
    chefer_relevancy_layers,
    complete_grid,
    find_attention_source,
    region_fractions,
    text_self_attention_paths,
    weight_gradients,
)
from mmaudit.methods.attribution_target import Target, unknown_tokens
from mmaudit.methods.memory_budget import MemoryBudget
from mmaudit.methods.region_scan import stratified_subset
from mmaudit.methods.stats import bootstrap_ci
from mmaudit.methods.text_attribution import (
    CLINICAL_WORDS,
    content_mask,
    is_word,
    metric_key,
    word_spans,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.data import Batch


class NotTextToImage(RuntimeError):
    """The attention module found runs, but not from the report's tokens to the image (a
    learned query, modality tokens): nothing for this check to analyse, a skip, not an
    error."""


@register
class AttentionCheck(Check):
    """Where in the image the model looks for each word of the report (cross-modal attention).

    What: captures the text -> image attention of the model's fusion through hooks (the
    built-in ``attention`` fusion, any ``nn.MultiheadAttention`` outside the encoders,
    Hugging Face cross-attention outside the encoders or inside the text encoder, as in
    BLIP / ALBEF) without changing the model. Several Hugging Face cross-attention layers
    are analysed together (``layer`` picks one). By default the maps are relevancy
    (Chefer et al. 2021: attention weighted by the gradient of the logit of each sample's
    predicted class, positive part, averaged over heads, propagated through the text
    encoder's self-attention and over the cross layers in the order they ran, when it is
    a Hugging Face model; for a multilabel target the logit of label ``target_class``,
    negated where that label is predicted negative -- a note names the score); with
    ``relevancy: false`` or when no gradient reaches the
    weights, raw head-averaged weights (averaged over the cross layers), labelled raw.
    A token with no positive relevancy has no map. Each text
    token's map over image regions is normalised to one and merged into words. For every
    frequent word (and every clinical word seen in ``min_count`` reports): its mean map
    over the dataset and the share of it on regions inside the ROI mask (a region counts
    as inside when at least ``roi_min_fraction`` of its pixels are), with a CI resampling
    patients; examples of word x region maps.
    Why: attention fusion is often presented as grounding words in image regions; a
    word such as "consolidation" whose attention lands on the corner marker rather than
    the lungs shows the model did not learn the grounding it appears to have.
    Metrics: ``attention.n_samples``, ``attention.relevancy`` (1 relevancy, 0 raw),
    ``attention.row_sum_error`` (max |sum of a captured attention row - 1|),
    ``attention.image_share`` (mean attention mass on image keys), ``attention.roi_chance``
    (ROI share of a uniform map), ``attention.roi_share_all_words``,
    ``attention.clinical_roi_share.<word>`` (clinical words), ``attention.roi_share.<word>``
    (other frequent words).
    Default thresholds: warn when a clinical word's ROI share is below 0.5 even at the
    upper end of its 95% CI (its attention falls mostly outside the ROI: the issue's
    finding, an absolute cut). It is not a test against chance: read it beside
    ``attention.roi_chance``, the share of a uniform map. Where the ROI covers most
    regions (large lung masks on a coarse grid), a word that grounds nowhere passes the
    0.5 cut; there, raise ``warn_below`` toward the chance share plus a margin. Warn when
    captured attention rows do not sum to one (the capture read the wrong tensor).
    Skipped, with the reason, when the model has no attention across modalities, or when
    the attention it has does not run from the report's tokens to the image (found by the
    first forward). Analyses at most ``max_samples`` rows (2,000; drawn within label x site
    cells): a fixed cost at any N, and some 60 reports per clinical word that appears in
    3 % of reports.
    """

    name = "attention"
    description = "cross-modal attention / relevancy maps per word; share inside the ROI"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_boot: int = Field(default=1000, ge=50, description="bootstrap resamples for CIs")
        alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - CI level")
        relevancy: bool = Field(
            default=True, description="Chefer relevancy (gradient-weighted); false: raw weights"
        )
        propagate_text: bool = Field(
            default=True, description="carry relevancy through the text encoder self-attention"
        )
        min_count: int = Field(default=5, ge=1, description="reports a word needs to be mapped")
        n_words: int = Field(default=12, ge=1, description="most frequent words mapped")
        clinical_words: list[str] = Field(
            default=list(CLINICAL_WORDS),
            description="words whose attention should fall inside the ROI",
        )
        roi_min_fraction: float = Field(
            default=0.25, gt=0, le=1, description="ROI pixel share that puts a region inside"
        )
        n_examples: int = Field(default=3, ge=0, description="example word x region maps")
        max_samples: int | None = Field(
            default=2000,
            ge=1,
            description="cap on samples analysed, drawn within label x site cells (None: all)",
        )
        grid: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
            default=None, description="image-region grid [rows, cols] when not detectable"
        )
        image_key_offset: int | None = Field(
            default=None, ge=0, description="index of the first image key (BYO models)"
        )
        layer: int | None = Field(
            default=None,
            description="analyse only this cross-attention module (index in module order,"
            " negative from the end); None: every Hugging Face cross-attention layer together",
        )
        target_class: int = Field(
            default=0,
            ge=0,
            description="multilabel: the label column whose logit (negated where the label"
            " is predicted negative) the relevancy follows",
        )

    default_thresholds: ClassVar[dict[str, ThresholdRule]] = {
        "clinical_word_outside_roi": ThresholdRule(
            metric="attention.clinical_roi_share.*",
            statistic="ci_high",
            warn_below=0.5,
            message="a clinical word's attention falls mostly outside the ROI",
            found="When the model reads the clinical word '{0}', it looks mostly outside the"
            " region of interest in the image",
            next_step="see in the word maps where '{0}' looks; if it is a marker or the"
            " border, crop or in-paint it in the training images, retrain and re-audit",
            figure="attention_word_maps",
        ),
        "capture_invalid": ThresholdRule(
            metric="attention.row_sum_error",
            warn_above=0.01,
            message="captured attention rows do not sum to one",
            found="The attention weights mmaudit captured do not sum to one, so the word maps"
            " may not show the model's attention",
            next_step="check which module the attention is captured from (it must output the"
            " softmax weights) and run the audit again",
        ),
    }
    requires: ClassVar[Requirements] = Requirements(all_modalities=["image", "text"], hooks=True)
    key_figures: ClassVar[tuple[str, ...]] = ("attention_word_maps",)

    def missing_requirements(self, ctx: AuditContext) -> str | None:
        reason = super().missing_requirements(ctx)
        if reason is not None:
            return reason
        p: AttentionCheck.Params = self.params  # type: ignore[assignment]
        _, why = find_attention_source(
            ctx.adapter, grid=p.grid, image_offset=p.image_key_offset, layer=p.layer
        )
        if why is not None:
            return why
        ds = ctx.dataset
        content = content_mask(ds.input_ids, ds.attention_mask, ds.tokenizer)  # type: ignore[arg-type]
        both = (
            ds.present[:, ds.modalities.index("image")] & ds.present[:, ds.modalities.index("text")]
        )
        usable = both & content.any(1).numpy()
        if not usable.any():
            return "no sample has both an image and a non-empty report"
        keep = torch.from_numpy(usable)
        return unknown_tokens(ds.tokenizer, ds.input_ids[keep], content[keep])  # type: ignore[index]

    def run(self, ctx: AuditContext) -> CheckOutput:
        p: AttentionCheck.Params = self.params  # type: ignore[assignment]
        out = CheckOutput()
        ds, adapter = ctx.dataset, ctx.adapter
        src, why = find_attention_source(
            adapter, grid=p.grid, image_offset=p.image_key_offset, layer=p.layer
        )
        if src is None:  # pragma: no cover - missing_requirements says so first
            raise RuntimeError(why)
        assert ds.input_ids is not None and ds.attention_mask is not None
        tok = ds.tokenizer
        content_all = content_mask(ds.input_ids, ds.attention_mask, tok)
        both = (
            ds.present[:, ds.modalities.index("image")] & ds.present[:, ds.modalities.index("text")]
        )
        rows = np.flatnonzero(both & content_all.any(1).numpy())
        if p.max_samples is not None and len(rows) > p.max_samples:
            # the label (every column of a multilabel target) and the site when configured
            labels = np.asarray(ctx.target)[rows].astype(str)
            strata = labels if labels.ndim == 1 else np.array(["".join(r) for r in labels])
            if _has_site(ctx):
                site = ds.attributes["site"].iloc[rows].astype(str).to_numpy()
                strata = np.char.add(np.char.add(strata, "|"), site)
            rows = rows[stratified_subset(strata, p.max_samples, ctx.rng("attention.rows"))]
        spans = word_spans(
            tok, [ds.texts[i] for i in rows], ds.input_ids[rows], ds.input_ids.shape[1]
        )
        span_of = {int(r): s for r, s in zip(rows, spans, strict=True)}
        self_paths = text_self_attention_paths(adapter) if p.relevancy and p.propagate_text else []
        target = Target.of(ctx, predicted=True, label=p.target_class)
        score_fn = target.score_fn()
        examples = set(self._example_rows(rows, target, ctx, p.n_examples))
        has_roi = bool(ds.mask_paths)
        state: dict[str, Any] = {
            "relevancy": p.relevancy,
            "image_sum": None,
            "dropped": {},
            "score": target.description,
        }

        cross_paths = src.paths or [src.path]
        budget = MemoryBudget(ctx.memory_budget_mb)

        def analyse(batch: Batch) -> list[dict[str, Any]]:
            """The batch in chunks of rows whose pass fits the memory budget (measured on
            the first batch: a forward of 1 and of 2 rows)."""

            def probe(k: int) -> None:
                with capture_attention(adapter.module, [*cross_paths, *self_paths]):
                    adapter.logits(batch.select(torch.zeros(k, dtype=torch.long)))

            assert batch.input_ids is not None
            key = (tuple(batch.input_ids.shape[1:]), None if batch.image is None else
                   tuple(batch.image.shape[1:]))  # fmt: skip
            step = budget.rows_per_chunk(
                "attention relevancy" if state["relevancy"] else "attention weights",
                key,
                probe,
                adapter.module,
                grad=bool(state["relevancy"]),
            )
            n = len(batch)
            if step >= n:
                return analyse_rows(batch)
            return [
                r
                for lo in range(0, n, step)
                for r in analyse_rows(batch.select(torch.arange(lo, min(n, lo + step))))
            ]

        def analyse_rows(batch: Batch) -> list[dict[str, Any]]:
            with capture_attention(adapter.module, [*cross_paths, *self_paths]) as store:
                logits = adapter.logits(batch)
                assert batch.input_ids is not None
                used = self._text_image_layers(store, cross_paths, batch.input_ids.shape[1])
                for path, reason in used.items():
                    if reason is not None:
                        state["dropped"][path] = reason
                kept = [q for q, reason in used.items() if reason is None]
                if not kept:
                    path, reason = next(iter(used.items()))
                    raise NotTextToImage(
                        f"no text -> image attention to analyse: {path} {reason}; attention"
                        " from a learned query or over modality tokens has no word x region"
                        " map (params.layer picks another module)"
                    )
                cross = [store[q][-1] for q in kept]
                shapes = {tuple(c.weights.shape[2:]) for c in cross}
                if len(shapes) > 1:
                    raise RuntimeError(
                        f"the cross-attention layers differ in shape {sorted(shapes)}; pick one"
                        " with params.layer"
                    )
                keys = int(cross[0].weights.shape[-1])
                problem = complete_grid(src, keys)
                if problem is not None:
                    raise RuntimeError(problem)
                # every cross layer's heads side by side: the head mean is the layer mean
                weights = torch.cat([c.weights.detach().float() for c in cross], dim=1)
                rel = None
                if state["relevancy"]:
                    score = score_fn(logits, batch).float().sum()
                    selfs = [store[q][-1] for q in self_paths if store[q]]
                    caps = [*cross, *selfs]
                    grads = weight_gradients(score, caps)
                    if any(g is None for g in grads[: len(cross)]):
                        state["relevancy"] = False
                    else:
                        steps = sorted(
                            (
                                (c.seq, "cross" if k < len(cross) else "self", c, g)
                                for k, (c, g) in enumerate(zip(caps, grads, strict=True))
                                if g is not None
                            ),
                            key=lambda t: t[0],
                        )
                        state["self_layers"] = sum(t[1] == "self" for t in steps)
                        rel = chefer_relevancy_layers(
                            [
                                (kind, c.weights.detach().float(), g.float())
                                for _, kind, c, g in steps
                            ]
                        )
            return self._per_sample(batch, weights, rel, src, span_of, examples, has_roi, state)

        # relevancy needs the graph from the cross-attention on, never the image encoder's:
        # frozen, its activations are not kept for a backward (ResNet-50 at 224 px: 82 MB a
        # row, 5 GB for a batch of 64)
        image_encoder = frozen(adapter, "image") if p.relevancy else contextlib.nullcontext()
        try:
            with image_encoder:
                parts = ctx.cache.map_batches(
                    analyse, grad=p.relevancy, desc="attention", indices=rows
                )
        except NotTextToImage as exc:  # found by running the model, not by its modules
            out.judged = 0
            out.skip_reason = str(exc)
            return out
        out.notes.extend(budget.notes())
        records = [r for part in parts for r in part]
        self._report(ctx, p, src, rows, records, state, out)
        return out

    # ------------------------------------------------------------------ per batch
    @staticmethod
    def _text_image_layers(
        store: dict[str, list[Captured]], paths: list[str], length: int
    ) -> dict[str, str | None]:
        """Each candidate layer with None if it ran as text -> image attention in this
        forward pass, else why not (never called; queries other than the report tokens).
        A text encoder built with cross layers may run them not at all, and a layer may
        attend from another modality; neither holds text -> image relevancy."""
        out: dict[str, str | None] = {}
        for path in paths:
            if not store[path]:
                out[path] = "was not called during the forward pass"
                continue
            queries = int(store[path][-1].weights.shape[-2])
            out[path] = (
                None
                if queries == length
                else f"has {queries} queries for {length} report tokens (not text -> image)"
            )
        return out

    def _per_sample(
        self,
        batch: Batch,
        weights: torch.Tensor,
        rel: torch.Tensor | None,
        src: AttentionSource,
        span_of: dict[int, list[tuple[str, list[int]]]],
        examples: set[int],
        has_roi: bool,
        state: dict[str, Any],
    ) -> list[dict[str, Any]]:
        assert src.grid is not None and src.n_image_tokens is not None
        lo, hi = src.image_offset, src.image_offset + src.n_image_tokens
        raw = weights.mean(1)  # (B, L, T)
        row_sum = weights.sum(-1)
        image_mass = raw[:, :, lo:hi].sum(-1)  # (B, L)
        source = rel if rel is not None else raw
        maps = source[:, :, lo:hi].clamp(min=0)
        mass = maps.sum(-1, keepdim=True)
        # a token with no positive relevancy on any region has no map (NaN), not a map of 0
        maps = torch.where(mass > 1e-12, maps / mass.clamp_min(1e-12), torch.nan)
        roi = None
        if has_roi and batch.roi_mask is not None:
            roi = region_fractions(batch.roi_mask, src.grid).cpu().numpy()
        if batch.image is not None:
            img = batch.image.float().mean(1).sum(0).cpu().numpy()
            state["image_sum"] = img if state["image_sum"] is None else state["image_sum"] + img
            state["image_count"] = state.get("image_count", 0) + len(batch)
        maps_np = maps.cpu().numpy()
        mass_np = image_mass.cpu().numpy()
        sums_np = row_sum.cpu().numpy()
        out = []
        for j, idx in enumerate(batch.index.cpu().numpy().tolist()):
            spans = span_of[int(idx)]
            positions = sorted({q for _, pos in spans for q in pos})
            rec: dict[str, Any] = {
                "row": int(idx),
                "row_sum_error": float(np.nanmax(np.abs(sums_np[j][:, positions] - 1.0)))
                if positions
                else 0.0,
                "image_share": float(mass_np[j, positions].mean()) if positions else np.nan,
                "roi": None if roi is None else roi[j],
                "words": {},
            }
            for word, pos in spans:
                rec["words"].setdefault(word, []).extend(maps_np[j, pos])
            rec["words"] = {
                w: np.nanmean(np.stack(v), axis=0)
                for w, v in rec["words"].items()
                if np.isfinite(np.stack(v)).all(1).any()
            }
            if int(idx) in examples:
                rec["example"] = [
                    (w, np.nan_to_num(np.nanmean(maps_np[j, pos], axis=0)))
                    for w, pos in spans
                    if np.isfinite(maps_np[j, pos]).all(1).any()
                ]
                if batch.image is not None:
                    rec["image"] = batch.image[j].float().mean(0).cpu().numpy()
            out.append(rec)
        return out

    @staticmethod
    def _example_rows(rows: np.ndarray, target: Target, ctx: AuditContext, n: int) -> list[int]:
        """The ``n`` samples scored most confidently (either way), in that order."""
        if n == 0 or len(rows) == 0:
            return []
        score = target.scores(ctx.cache.sweep().logits)[rows]
        order = np.argsort(-np.abs(score), kind="stable")
        return [int(rows[k]) for k in order[:n]]

    # ------------------------------------------------------------------ summary
    def _report(
        self,
        ctx: AuditContext,
        p: AttentionCheck.Params,
        src: AttentionSource,
        rows: np.ndarray,
        records: list[dict[str, Any]],
        state: dict[str, Any],
        out: CheckOutput,
    ) -> None:
        assert src.grid is not None
        label = "relevancy (Chefer et al. 2021)" if state["relevancy"] else "raw attention weights"
        out.notes.extend(src.notes)
        dropped: dict[str, str] = state["dropped"]
        out.notes.extend(f"{path} left out: it {why}" for path, why in dropped.items())
        analysed = [q for q in src.paths or [src.path] if q not in dropped]
        out.notes.append(
            f"maps are {label} of {_describe(analysed)} over a"
            f" {src.grid[0]} x {src.grid[1]} image-region grid"
        )
        if state["relevancy"]:
            out.notes.append(f"relevancy follows the gradient of {state['score']}")
            layers = state.get("self_layers", 0)
            out.notes.append(
                f"relevancy carried through {layers} text self-attention layers"
                if layers
                else "relevancy of the fusion attention alone (no text self-attention captured)"
            )
        if p.relevancy and not state["relevancy"]:
            out.notes.append("no gradient reached the attention weights: raw weights are shown")
        groups_all = ctx.groups
        out.metrics["attention.n_samples"] = len(records)
        out.metrics["attention.relevancy"] = int(bool(state["relevancy"]))
        out.metrics["attention.row_sum_error"] = float(
            max((r["row_sum_error"] for r in records), default=0.0)
        )
        share = np.array([r["image_share"] for r in records], dtype=float)
        g = None if groups_all is None else np.asarray(groups_all)[[r["row"] for r in records]]
        boot: dict[str, Any] = {"n_boot": p.n_boot, "alpha": p.alpha, "seed": ctx.seed}
        ok = np.isfinite(share)
        out.metrics["attention.image_share"] = bootstrap_ci(
            np.mean,
            share[ok],
            groups=None if g is None else g[ok],
            **boot,
        )
        # inside-ROI indicator per region, per sample (NaN when the sample has no mask)
        inside: dict[int, np.ndarray] = {}
        for r in records:
            frac = r["roi"]
            if frac is not None and np.isfinite(frac).all():
                inside[r["row"]] = (frac >= p.roi_min_fraction).astype(float)
        if not inside:
            out.notes.append("no ROI masks: ROI shares not computed (data.image.roi_mask)")
        else:
            out.metrics["attention.roi_chance"] = float(
                np.mean([v.mean() for v in inside.values()])
            )
        # per word: one entry per report that contains it
        occ: dict[str, list[tuple[int, np.ndarray]]] = {}
        for r in records:
            for w, m in r["words"].items():
                if is_word(w):
                    occ.setdefault(w, []).append((r["row"], m))
        clinical = {w.lower() for w in p.clinical_words}
        frequent = sorted(
            (w for w, v in occ.items() if len(v) >= p.min_count),
            key=lambda w: (-len(occ[w]), w),
        )
        chosen = frequent[: p.n_words] + [w for w in frequent[p.n_words :] if w in clinical]
        all_shares, all_rows = [], []
        table, maps = [], {}
        taken: set[str] = set()
        for w in chosen:
            entries = occ[w]
            mean_map = np.mean([m for _, m in entries], axis=0)
            maps[w] = mean_map
            row_ids = np.array([rid for rid, _ in entries])
            est = None
            if inside:
                vals = np.array(
                    [float(m @ inside[rid]) if rid in inside else np.nan for rid, m in entries]
                )
                keep = np.isfinite(vals)
                gw = None if groups_all is None else np.asarray(groups_all)[row_ids[keep]]
                est = bootstrap_ci(np.mean, vals[keep], groups=gw, **boot)
                key = metric_key(w)
                while key in taken:
                    key += "_"
                taken.add(key)
                prefix = "attention.clinical_roi_share" if w in clinical else "attention.roi_share"
                out.metrics[f"{prefix}.{key}"] = est
            table.append(
                {
                    "word": w,
                    "clinical": w in clinical,
                    "count": len(entries),
                    "roi_share": None if est is None else est.value,
                    "ci_low": None if est is None else est.ci_low,
                    "ci_high": None if est is None else est.ci_high,
                    "peak_region": int(np.argmax(mean_map)),
                }
            )
        for r in records:
            if r["row"] in inside:
                for w, m in r["words"].items():
                    if is_word(w):
                        all_shares.append(float(m @ inside[r["row"]]))
                        all_rows.append(r["row"])
        if all_shares:
            ga = None if groups_all is None else np.asarray(groups_all)[all_rows]
            out.metrics["attention.roi_share_all_words"] = bootstrap_ci(
                np.mean,
                np.array(all_shares),
                groups=ga,
                **boot,
            )
        out.tables["word_regions"] = pd.DataFrame(
            table,
            columns=["word", "clinical", "count", "roi_share", "ci_low", "ci_high", "peak_region"],
        )
        out.tables["word_maps"] = pd.DataFrame(
            [
                {
                    "word": w,
                    "region": k,
                    "row": k // src.grid[1],
                    "col": k % src.grid[1],
                    "value": v,
                }
                for w, m in maps.items()
                for k, v in enumerate(m.tolist())
            ]
        )
        mean_image = (
            state["image_sum"] / max(state.get("image_count", 1), 1)
            if state["image_sum"] is not None
            else None
        )
        if maps:
            out.figures["attention_word_maps"] = _word_maps_figure(
                maps, table, src.grid, mean_image, label
            )
        examples = [r for r in records if "example" in r]
        if examples:
            out.figures["attention_examples"] = _examples_figure(
                examples, src.grid, label, ctx.dataset.ids, inside, clinical
            )
            out.private |= {"attention_examples"}
        self._coverage(ctx, p, rows, records, inside, chosen, clinical, out)

    def _coverage(
        self,
        ctx: AuditContext,
        p: AttentionCheck.Params,
        rows: np.ndarray,
        records: list[dict[str, Any]],
        inside: dict[int, np.ndarray],
        chosen: list[str],
        clinical: set[str],
        out: CheckOutput,
    ) -> None:
        """What the verdict rests on: ``judged`` (clinical words whose ROI share the rule can
        judge; the row-sum rule checks the capture, not the model), ``rows_used`` (analysed
        rows with an ROI), coverage notes with counts, and the skip reason."""
        rules = {k: r for k, r in self.default_thresholds.items() if k != "capture_invalid"}
        out.judged = count_judged(out.metrics, rules)
        out.rows_used = len(inside)
        n = len(ctx.dataset.present)
        if len(rows) < n:
            capped = p.max_samples is not None and len(rows) == p.max_samples
            out.coverage.append(
                f"attention analysed on {len(rows)} of {n} rows"
                + (
                    f" (a seeded sample of max_samples = {p.max_samples}, drawn within"
                    f" {'label x site' if _has_site(ctx) else 'label'} cells)"
                    if capped
                    else " (the others lack an image or a non-empty report)"
                )
            )
        if inside and len(inside) < len(records):
            out.coverage.append(
                f"ROI shares use {len(inside)} of {len(records)} analysed rows (the others have"
                " no ROI mask)"
            )
        if not inside:
            out.skip_reason = (
                f"none of the {len(records)} analysed rows has an ROI mask"
                " (data.image.roi_mask), so no word's ROI share could be judged"
            )
        elif not any(w in clinical for w in chosen):
            out.skip_reason = (
                f"no clinical word (params.clinical_words) occurs in min_count ="
                f" {p.min_count} or more of the {len(records)} analysed reports, so no word's"
                " grounding could be judged"
            )
        else:
            out.skip_reason = "no clinical word's ROI share has a CI to judge (see the notes)"


@contextlib.contextmanager
def frozen(adapter: ModelAdapter, layer: str) -> Iterator[None]:
    """The parameters of the module ``adapter.layers[layer]`` names (if any) take no gradient
    while open, so that autograd records none of its operations; restored on exit."""
    path = adapter.layers.get(layer)
    params = [] if path is None else list(adapter.module.get_submodule(path).parameters())
    before = [q.requires_grad for q in params]
    try:
        for q in params:
            q.requires_grad_(False)
        yield
    finally:
        for q, flag in zip(params, before, strict=True):
            q.requires_grad_(flag)


def _has_site(ctx: AuditContext) -> bool:
    """Whether the audit has a ``site`` attribute (the capped rows are drawn within it)."""
    return "site" in getattr(ctx.dataset.attributes, "columns", [])


def _describe(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{len(paths)} layers ({paths[0]}, ..., {paths[-1]})"


# --------------------------------------------------------------------------- figures


def _upsample(region_map: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.asarray(region_map, dtype=np.float32)).view(1, 1, *grid)
    up = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def _word_maps_figure(
    maps: dict[str, np.ndarray],
    table: list[dict[str, Any]],
    grid: tuple[int, int],
    mean_image: np.ndarray | None,
    label: str,
) -> Figure:
    """Mean region map per word over the dataset, on the mean image."""
    plt = pyplot()
    words = list(maps)
    cols = min(4, len(words))
    nrows = (len(words) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.8 * nrows), squeeze=False)
    info = {t["word"]: t for t in table}
    size = mean_image.shape if mean_image is not None else (grid[0] * 8, grid[1] * 8)
    for ax, w in zip(axes.ravel(), words, strict=False):
        if mean_image is not None:
            ax.imshow(mean_image, cmap="gray")
        ax.imshow(_upsample(maps[w], grid, size), cmap="jet", alpha=0.45)
        t = info[w]
        roi = "" if t["roi_share"] is None else f", ROI {t['roi_share']:.2f}"
        mark = " *" if t["clinical"] else ""
        ax.set_title(f"{w}{mark} (n={t['count']}{roi})", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"mean image-region map per word: {label} (* clinical word)", fontsize=9)
    fig.tight_layout()
    return literal_text(fig)


def _examples_figure(
    examples: list[dict[str, Any]],
    grid: tuple[int, int],
    label: str,
    ids: list[str],
    inside: dict[int, np.ndarray],
    clinical: set[str],
) -> Figure:
    """Per example: the image with the map of its most clinical word, and word x region."""
    plt = pyplot()
    fig, axes = plt.subplots(
        len(examples),
        2,
        figsize=(11, 3.2 * len(examples)),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 2.6]},
    )
    for (ax_img, ax_mat), rec in zip(axes, examples, strict=True):
        pieces = [(w, m) for w, m in rec["example"] if is_word(w)]
        focus = next((k for k, (w, _) in enumerate(pieces) if w in clinical), 0)
        if "image" in rec:
            ax_img.imshow(rec["image"], cmap="gray")
            if pieces:
                ax_img.imshow(
                    _upsample(pieces[focus][1], grid, rec["image"].shape), cmap="jet", alpha=0.45
                )
            if rec["row"] in inside:
                roi = _upsample(inside[rec["row"]], grid, rec["image"].shape)
                ax_img.contour(roi, levels=[0.5], colors="white", linewidths=0.8)
        word = pieces[focus][0] if pieces else ""
        ax_img.set_title(f"{ids[rec['row']]}: '{word}'", fontsize=8)
        ax_img.axis("off")
        if pieces:
            mat = np.stack([m for _, m in pieces])
            ax_mat.imshow(mat, aspect="auto", cmap="viridis")
            ax_mat.set_yticks(range(len(pieces)), [w for w, _ in pieces], fontsize=6)
            ax_mat.set_xlabel("image region (row-major)", fontsize=8)
        ax_mat.set_title(f"word x region, {label}", fontsize=8)
    fig.tight_layout()
    return literal_text(fig)
