"""Built-in checkpoint folders: ``model.safetensors`` + ``architecture.json``.

``architecture.json`` is ``{"format": "mmaudit-builtin", "format_version": 1, "spec": {...}}``
so the module tree can be rebuilt before the weights are loaded; safetensors keeps the
weights free of pickle (loading them never runs code). Every problem a user can fix
raises ``ModelLoadError`` naming the file and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from mmaudit.engine.errors import ModelLoadError
from mmaudit.engine.models.builtin import MultimodalModel, build_model
from mmaudit.engine.models.spec import ArchitectureSpec

FORMAT = "mmaudit-builtin"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
ARCH_FILE = "architecture.json"
_WRITE_HINT = "write it with mmaudit.engine.models.save_checkpoint(model, spec, folder)"


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no shared storage (safetensors refuses shared/tied ones)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        whole = storage.nbytes() == t.numel() * t.element_size()
        if storage.data_ptr() in seen or not whole:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_checkpoint(model: nn.Module, spec: ArchitectureSpec, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``architecture.json`` into ``directory`` (created).

    Each file is written to a temporary name and renamed, so an interrupted save never
    leaves a half-written file under the real name. Returns the folder.
    """
    from safetensors.torch import save_file

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _plain_tensors(model.state_dict())
    tmp_weights = folder / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": FORMAT})
    os.replace(tmp_weights, folder / WEIGHTS_FILE)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": spec.model_dump(mode="json")}
    tmp_arch = folder / (ARCH_FILE + ".tmp")
    tmp_arch.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_arch, folder / ARCH_FILE)
    return folder


def _validation_message(exc: ValidationError, limit: int = 3) -> str:
    """``spec.image.img_size: Input should be a valid integer`` for the first few errors."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in ("spec", *err["loc"]))
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def read_spec(directory: str | Path) -> ArchitectureSpec:
    """The validated ``ArchitectureSpec`` of a checkpoint folder (weights not read)."""
    folder = Path(directory)
    if not folder.exists():
        raise ModelLoadError(
            f"checkpoint folder not found: {folder}", hint="check model.checkpoint in the config"
        )
    if not folder.is_dir():
        raise ModelLoadError(
            f"checkpoint {folder} is a file, not a folder",
            hint=f"point model.checkpoint at the folder holding {ARCH_FILE} and {WEIGHTS_FILE}",
        )
    arch = folder / ARCH_FILE
    if not arch.is_file():
        raise ModelLoadError(
            f"{arch} not found: the checkpoint folder has no {ARCH_FILE}", _WRITE_HINT
        )
    try:
        doc = json.loads(arch.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{arch}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            hint="fix the file or write it again with save_checkpoint",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{arch}: cannot read: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ModelLoadError(
            f"{arch}: format is {found!r}, expected {FORMAT!r}",
            hint="this is not an mmaudit built-in checkpoint; use model.factory or"
            " model.torchscript for other models",
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{arch}: format_version {version!r} is not supported (this mmaudit reads"
            f" up to {FORMAT_VERSION})",
            hint="upgrade mmaudit or re-save the checkpoint",
        )
    if "spec" not in doc:
        raise ModelLoadError(f"{arch}: no 'spec' key", _WRITE_HINT)
    try:
        return ArchitectureSpec.model_validate(doc["spec"])
    except ValidationError as exc:
        raise ModelLoadError(
            f"{arch}: invalid spec: {_validation_message(exc)}",
            hint="fix these keys of architecture.json",
        ) from exc


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str, hint: str) -> None:
    """Load ``state`` strictly, or a ModelLoadError ("{what}: missing ...; unexpected ...") listing
    the first missing / unexpected / mis-shaped keys. Shared by every checkpoint format."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first 5: {missing[:5]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (first 5: {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first 5: {shapes[:5]})")
        raise ModelLoadError(f"{what}: " + "; ".join(parts), hint=hint)
    model.load_state_dict(state, strict=True)


def load_checkpoint(directory: str | Path) -> tuple[MultimodalModel, ArchitectureSpec]:
    """Rebuild the model from ``architecture.json``, load ``model.safetensors``; eval mode, CPU."""
    from safetensors.torch import load_file

    folder = Path(directory)
    spec = read_spec(folder)
    arch = folder / ARCH_FILE
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(
            f"{weights} not found: the checkpoint folder has no {WEIGHTS_FILE}", _WRITE_HINT
        )
    try:
        model = build_model(spec, load_pretrained=False)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{arch}: cannot build the model: {exc}", exc.hint) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"{arch}: cannot build the model: {type(exc).__name__}: {exc}",
            hint="check the spec in architecture.json",
        ) from exc
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise ModelLoadError(
            f"{weights}: not a readable safetensors file: {exc}",
            hint="the file may be truncated; save the checkpoint again",
        ) from exc
    fit_state_dict(
        model,
        state,
        f"{weights}: weights do not fit the architecture in {arch.name}",
        hint="the two files must come from the same save_checkpoint call",
    )
    return model.eval(), spec
