"""The built-in multimodal model family: spec, module, checkpoint folder I/O.

``import mmaudit.engine.models`` imports torch and pydantic only; timm and transformers are
imported when an encoder is built.
"""

from __future__ import annotations

from mmaudit.engine.models.builtin import MultimodalModel, build_model
from mmaudit.engine.models.checkpoint import load_checkpoint, read_spec, save_checkpoint
from mmaudit.engine.models.fusion import LateHead
from mmaudit.engine.models.spec import (
    ArchitectureSpec,
    ImageSpec,
    TabularSpec,
    TextSpec,
    tiny_image_spec,
    tiny_text_spec,
)

__all__ = [
    "ArchitectureSpec",
    "ImageSpec",
    "LateHead",
    "MultimodalModel",
    "TabularSpec",
    "TextSpec",
    "build_model",
    "load_checkpoint",
    "read_spec",
    "save_checkpoint",
    "tiny_image_spec",
    "tiny_text_spec",
]
