"""Fusion modules (the "embedding" layer) and the late-fusion head.

Every fusion is called as ``fusion(feats, present, text_mask)``: ``feats`` is the list of
per-modality encoder outputs (after missing-modality replacement) in ``spec.modalities``
order, ``present`` the (B, M) bool mask, ``text_mask`` the (B, L) text attention mask or
None. It returns one tensor, the fused vector ``(B, out_dim)`` fed to the head, so a hook
on the fusion module reads or replaces the model's embedding.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from mmaudit.engine.models.encoders import masked_mean


def _present_weights(present: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, M) float weights: 1 for present modalities; all 1 for a sample with none present."""
    w = present.to(dtype)
    none = w.sum(1, keepdim=True) == 0
    return torch.where(none, torch.ones_like(w), w)


def _common_dtype(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cast features to one dtype (autocast may leave encoder outputs in bf16 and fills in fp32)."""
    dtype = feats[0].dtype
    for f in feats[1:]:
        dtype = torch.promote_types(dtype, f.dtype)
    return [f.to(dtype) for f in feats]


class ConcatFusion(nn.Module):
    """Concatenate the pooled modality embeddings: ``out_dim = M * dim``."""

    def __init__(self, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.out_dim = n_modalities * dim

    def forward(
        self,
        feats: list[torch.Tensor],
        present: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, M * dim) concatenation in modality order."""
        return torch.cat(_common_dtype(feats), dim=-1)


class ProjectionFusion(nn.Module):
    """Mean of the *present* modalities' embeddings in the shared space: ``out_dim = dim``.

    The encoders already project and L2-normalise into one space of width ``dim`` (so an
    image embedding and a text embedding can be compared directly); the fused embedding
    stays in that space. Absent modalities are left out of the mean (their replacement,
    learned token or zeros, is therefore not used); a sample with no modality present
    gets the mean of the replacements.
    """

    def __init__(self, n_modalities: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(
        self,
        feats: list[torch.Tensor],
        present: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, dim) mean over present modalities."""
        stacked = torch.stack(_common_dtype(feats), dim=1)
        w = _present_weights(present, stacked.dtype).unsqueeze(-1)
        return (stacked * w).sum(1) / w.sum(1)


class BilinearFusion(nn.Module):
    """Concat plus low-rank bilinear (elementwise-product) terms for every modality pair.

    For each pair (a, b): ``(U_ab e_a) * (V_ab e_b)`` of width ``rank = max(1, dim // 2)``
    (the MLB factorisation of a full bilinear map). ``out_dim = M*dim + pairs*rank``. With
    one modality there is no pair and this is plain concat.
    """

    def __init__(self, modalities: list[str], dim: int) -> None:
        super().__init__()
        self.rank = max(1, dim // 2)
        self.pairs = [f"{a}_{b}" for a, b in itertools.combinations(modalities, 2)]
        self.left = nn.ModuleDict({p: nn.Linear(dim, self.rank, bias=False) for p in self.pairs})
        self.right = nn.ModuleDict({p: nn.Linear(dim, self.rank, bias=False) for p in self.pairs})
        self._index = list(itertools.combinations(range(len(modalities)), 2))
        self.out_dim = len(modalities) * dim + len(self.pairs) * self.rank

    def forward(
        self,
        feats: list[torch.Tensor],
        present: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, M*dim + pairs*rank)."""
        feats = _common_dtype(feats)
        terms = [
            self.left[p](feats[i]) * self.right[p](feats[j])
            for p, (i, j) in zip(self.pairs, self._index, strict=True)
        ]
        return torch.cat([*feats, *terms], dim=-1)


class AttentionFusion(nn.Module):
    """Text tokens cross-attend to image region tokens (+ the tabular token).

    Queries are the text token states, keys/values the concatenated image tokens and
    tabular token (``nn.MultiheadAttention``, batch first). ``last_attention`` keeps the
    latest per-head weights ``(B, heads, L_text, T_keys)`` (detached). Pooling: masked
    mean over non-padding text positions of the attended output, concatenated with the
    masked mean of the text tokens themselves: ``out_dim = 2 * dim``.

    Masking: padded text positions are left out of the pooling (their rows of
    ``last_attention`` still sum to 1 and should be ignored). Keys of a modality absent
    for a sample are masked out (weight exactly 0) when ``missing_tokens`` is off; with
    ``missing_tokens`` on, the first key of that modality (the learned token) stays
    visible so the model can attend to "missing". An absent text query keeps only its
    first token. A sample whose keys would all be masked sees them all (they are zeros).

    Fallbacks: without text, one learned query vector attends to image/tabular tokens
    (``L_text = 1``) and the first half of the output is the masked mean of the keys;
    with text only, text tokens self-attend (padding keys masked). The head count is
    ``attention_heads(text.num_heads, dim)``.
    """

    def __init__(
        self, modalities: list[str], dim: int, num_heads: int, missing_tokens: bool
    ) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.has_text = "text" in modalities
        self.key_modalities = [m for m in modalities if m != "text"] or ["text"]
        self.keep_absent_first_key = missing_tokens
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        if not self.has_text:
            self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.out_dim = 2 * dim
        self.last_attention: torch.Tensor | None = None

    def forward(
        self,
        feats: list[torch.Tensor],
        present: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 2 * dim); also sets ``last_attention``."""
        feats = _common_dtype(feats)
        by_name = dict(zip(self.modalities, feats, strict=True))
        batch = present.shape[0]
        device = present.device
        if self.has_text:
            q = by_name["text"]
            qmask = self._text_mask(q, present[:, self.modalities.index("text")], text_mask)
        else:
            q = self.query.to(feats[0].dtype).expand(batch, -1, -1)
            qmask = torch.ones(batch, 1, dtype=torch.bool, device=device)
        keys, valid = [], []
        for m in self.key_modalities:
            k = by_name[m]
            if m == "text":
                v = qmask.clone()
            else:
                v = torch.ones(k.shape[:2], dtype=torch.bool, device=device)
                absent = ~present[:, self.modalities.index(m)]
                v = v & ~absent[:, None]
                if self.keep_absent_first_key:
                    v[:, 0] |= absent
            keys.append(k)
            valid.append(v)
        key = torch.cat(keys, dim=1)
        kvalid = torch.cat(valid, dim=1)
        kvalid = kvalid | ~kvalid.any(1, keepdim=True)
        out, weights = self.attn(
            q,
            key,
            key,
            key_padding_mask=~kvalid,
            need_weights=True,
            average_attn_weights=False,
        )
        self.last_attention = weights.detach()
        context = masked_mean(q, qmask) if self.has_text else masked_mean(key, kvalid)
        return torch.cat([context, masked_mean(out, qmask)], dim=-1)

    @staticmethod
    def _text_mask(
        q: torch.Tensor, text_present: torch.Tensor, text_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Bool (B, L) valid query positions; an absent or empty text keeps its first token."""
        batch, length = q.shape[:2]
        if text_mask is None or tuple(text_mask.shape) != (batch, length):
            mask = torch.ones(batch, length, dtype=torch.bool, device=q.device)
        else:
            mask = text_mask.bool().clone()
        first_only = ~text_present | ~mask.any(1)
        mask[first_only] = False
        mask[first_only, 0] = True
        return mask


class LateHead(nn.Module):
    """Late fusion: one linear classifier per modality; logits averaged over present ones.

    Input is the concat fusion output ``(B, M * dim)``; a sample with no modality present
    averages all per-modality logits (computed on the replacements).
    """

    def __init__(self, modalities: list[str], dim: int, num_outputs: int) -> None:
        super().__init__()
        self.dim = dim
        self.heads = nn.ModuleDict({m: nn.Linear(dim, num_outputs) for m in modalities})

    def forward(self, fused: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M * dim) [+ (B, M) present] -> (B, num_outputs)."""
        parts = fused.split(self.dim, dim=-1)
        logits = torch.stack(
            [head(x) for head, x in zip(self.heads.values(), parts, strict=True)], dim=1
        )
        if present is None:
            return logits.mean(1)
        w = _present_weights(present, logits.dtype).unsqueeze(-1)
        return (logits * w).sum(1) / w.sum(1)


def attention_heads(text_heads: int | None, dim: int) -> int:
    """Fusion attention heads: the text encoder's count (2 without text) if it divides
    ``dim``, else 1, so the spec needs no extra field."""
    heads = text_heads or 2
    return heads if dim % heads == 0 else 1


def build_fusion(
    kind: str, modalities: list[str], dim: int, num_heads: int, missing_tokens: bool
) -> nn.Module:
    """The fusion module for ``kind`` (late fusion fuses by concat; its head does the rest)."""
    if kind in ("concat", "late"):
        return ConcatFusion(len(modalities), dim)
    if kind == "projection":
        return ProjectionFusion(len(modalities), dim)
    if kind == "bilinear":
        return BilinearFusion(modalities, dim)
    if kind == "attention":
        return AttentionFusion(modalities, dim, num_heads, missing_tokens)
    raise ValueError(f"unknown fusion '{kind}'")
