"""Small bring-your-own models for the tests: factories that configs name as
``tiny_models:build_tiny`` with ``python_path`` = the tests folder (conftest's
``byo_model_config``). Not built-in-family models: the adapter must find their layers,
inputs and embeddings itself."""

from __future__ import annotations

import torch
from torch import nn


class TinyFusion(nn.Module):
    """A user's own image + labs model, defined here and loaded by factory + weights."""

    def __init__(self, width: int = 8, n_tab: int = 2, n_out: int = 1) -> None:
        super().__init__()
        self.img = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.tab = nn.Linear(n_tab, 4)
        self.fuse = nn.Linear(8, width)
        self.out = nn.Linear(width, n_out)

    def forward(self, image: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        fused = torch.relu(self.fuse(torch.cat([self.img(image), self.tab(tabular)], dim=1)))
        return self.out(fused)


def build_tiny(width: int = 8, n_tab: int = 2, n_out: int = 1) -> TinyFusion:
    """The factory a config names as ``tiny_models:build_tiny``."""
    torch.manual_seed(0)
    return TinyFusion(width, n_tab, n_out)


class TinyWithPresent(TinyFusion):
    """TinyFusion that takes a presence mask and zeroes a missing image's features itself."""

    def forward(  # type: ignore[override]
        self, image: torch.Tensor, tabular: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        return super().forward(image * present[:, :1, None, None].float(), tabular)


def build_tiny_present() -> TinyWithPresent:
    torch.manual_seed(0)
    return TinyWithPresent()


class RenamedFusion(nn.Module):
    """A model whose forward keywords are not mmaudit's (``pixels``, ``labs``) and whose
    fused vector is only reachable by a dotted path (``head.1``, inside a Sequential)."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.tab = nn.Linear(2, 4)
        self.head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 1))

    def forward(self, pixels: torch.Tensor, labs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.img(pixels), self.tab(labs)], dim=1))


def build_renamed() -> RenamedFusion:
    torch.manual_seed(0)
    return RenamedFusion()


class KwargsFusion(TinyFusion):
    """Takes anything as keywords: no signature check is possible, none is made."""

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(inputs["image"], inputs["tabular"])


class NeedsExtra(TinyFusion):
    """Requires a keyword that mmaudit never passes."""

    def forward(  # type: ignore[override]
        self, image: torch.Tensor, tabular: torch.Tensor, scanner: torch.Tensor
    ) -> torch.Tensor:
        return super().forward(image, tabular)


def build_kwargs() -> KwargsFusion:
    return KwargsFusion()


def build_needs_extra() -> NeedsExtra:
    return NeedsExtra()


class TextTabFusion(nn.Module):
    """A user's report + labs model: a text encoder with its own token embedding (not named
    ``word_embeddings``) beside a second ``nn.Embedding`` outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.txt = nn.ModuleDict({"tok": nn.Embedding(50, 4), "proj": nn.Linear(4, 4)})
        self.visit = nn.Embedding(3, 4)
        self.tab = nn.Linear(2, 4)
        self.out = nn.Linear(8, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tabular: torch.Tensor
    ) -> torch.Tensor:
        text = self.txt["proj"](self.txt["tok"](input_ids).mean(1))
        return self.out(torch.cat([text, self.tab(tabular) + self.visit.weight[0]], dim=1))


def build_text_tab() -> TextTabFusion:
    torch.manual_seed(0)
    return TextTabFusion()
