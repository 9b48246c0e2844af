"""``ModelAdapter``: any ``nn.Module`` seen the way the checks need it (``loading.py`` builds
one from a checkpoint). The adapter knows how to call the model from a ``Batch``, which
modules are the fused embedding, the modality encoders and the Grad-CAM layer, and how to
read or replace their outputs through hooks that are always released.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from mmaudit.engine.data import Batch
from mmaudit.engine.errors import DeviceError, ModelLoadError
from mmaudit.engine.layer_detection import TOKEN_EMBEDDINGS, is_under


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a clear error when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"runtime.device is '{name}' but no CUDA device is available here",
                hint="use --device cpu or device: auto",
            )
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise DeviceError(
                f"runtime.device '{name}': only {torch.cuda.device_count()} GPU(s) here"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("runtime.device is 'mps' but MPS is not available here")
    return torch.device(name)


def autocast_dtype(device_type: str, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on a device type, or None (plain fp32).

    Autocast runs on CUDA only: bf16 on a CPU is often slower than fp32 there, and fp16
    CPU kernels are incomplete, so a CPU run asked for bf16 / fp16 runs fp32.
    """
    if device_type != "cuda" or precision == "fp32":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class _Substitute(nn.Module):
    """Stands in for a module: returns ``fn(batch)`` instead of running the original."""

    def __init__(self, fn: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fn()


class ModelAdapter:
    """A loaded model plus how to call it and where its named layers are."""

    def __init__(
        self,
        module: nn.Module,
        *,
        source: str,
        modalities: tuple[str, ...],
        keywords: dict[str, str],
        layers: dict[str, str],
        detected: dict[str, str],
        device: torch.device,
        precision: str = "fp32",
        scriptable_hooks: bool = True,
        model_modalities: tuple[str, ...] | None = None,
    ) -> None:
        self.module = module.to(device).eval()
        self.source = source
        self.modalities = modalities
        self.keywords = keywords
        self.layers = layers
        self.detected = detected
        self.device = device
        self.precision = precision
        self.supports_hooks = scriptable_hooks
        self.model_modalities = model_modalities or modalities
        # present columns follow the data's modality order; the model may order (or have) others
        self._present_columns = [
            modalities.index(m) if m in modalities else -1 for m in self.model_modalities
        ]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------ calling
    def kwargs(self, batch: Batch) -> dict[str, Any]:
        """The forward keyword arguments for ``batch`` (only the modalities the model takes)."""
        out: dict[str, Any] = {}
        if "image" in self.keywords and batch.image is not None:
            out[self.keywords["image"]] = batch.image
        if "text" in self.keywords and batch.input_ids is not None:
            out[self.keywords["text"]] = batch.input_ids
            if "text_mask" in self.keywords:
                out[self.keywords["text_mask"]] = batch.attention_mask
        if "tabular" in self.keywords and batch.tabular is not None:
            out[self.keywords["tabular"]] = batch.tabular
        if "present" in self.keywords:
            out[self.keywords["present"]] = self.present_for_model(batch.present)
        return out

    def present_for_model(self, present: torch.Tensor) -> torch.Tensor:
        """The (B, M) presence mask in the model's modality order (absent where data lacks one)."""
        if self._present_columns == list(range(present.shape[1])):
            return present
        cols = [
            present[:, c] if c >= 0 else torch.zeros_like(present[:, 0])
            for c in self._present_columns
        ]
        return torch.stack(cols, dim=1)

    @property
    def effective_precision(self) -> str:
        """The precision that actually runs: the asked one under CUDA autocast, else fp32."""
        dtype = autocast_dtype(self.device.type, self.precision)
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 / fp16 autocast on CUDA when asked; a no-op elsewhere."""
        dtype = autocast_dtype(self.device.type, self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def logits(self, batch: Batch) -> torch.Tensor:
        """Run the model on ``batch`` (already on the device); logits as float (B, K)."""
        with self.autocast():
            out = self.module(**self.kwargs(batch))
        return normalise_output(out).float()

    # ------------------------------------------------------------------ hooks
    def get(self, layer: str) -> nn.Module:
        """The module named by a ``layers:`` key (embedding, image, gradcam...) or a dotted path."""
        path = self.layers.get(layer, layer)
        return self.module.get_submodule(path)

    @contextlib.contextmanager
    def capture(self, names: list[str], detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """Record the latest output of each named layer while the context is open."""
        if not self.supports_hooks and names:
            raise ModelLoadError("layer hooks are not available on a TorchScript model")
        store: dict[str, torch.Tensor] = {}
        handles = []
        for name in names:

            def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
                t = normalise_output(output, keep_shape=True)
                store[name] = t.detach() if detach else t

            handles.append(self.get(name).register_forward_hook(hook))
        self._handles.extend(handles)
        try:
            yield store
        finally:
            for h in handles:
                h.remove()
                self._handles.remove(h)

    @contextlib.contextmanager
    def replace_output(
        self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> Iterator[None]:
        """Replace the output of a layer by ``fn(output)`` (e.g. an erased embedding)."""
        if not self.supports_hooks:
            raise ModelLoadError("layer hooks are not available on a TorchScript model")

        def hook(_m: nn.Module, _i: Any, output: Any) -> torch.Tensor:
            return fn(normalise_output(output, keep_shape=True))

        h = self.get(name).register_forward_hook(hook)
        self._handles.append(h)
        try:
            yield
        finally:
            h.remove()
            self._handles.remove(h)

    @contextlib.contextmanager
    def substitute(self, name: str, fn: Callable[[], torch.Tensor]) -> Iterator[None]:
        """Swap a module for one returning ``fn()`` so the original never runs (reuse of cached
        encoder outputs: only what lies after it, e.g. the fusion head, is computed)."""
        path = self.layers.get(name, name)
        original = self.module.get_submodule(path)
        self.module.set_submodule(path, _Substitute(fn))
        try:
            yield
        finally:
            self.module.set_submodule(path, original)

    def detect_on_batch(self, batch: Batch) -> None:
        """Find the token-embedding layer by watching one forward of ``batch``, when neither
        the config nor :func:`detect_text_embedding_layer` named it: the first
        ``nn.Embedding`` / ``nn.EmbeddingBag`` (under ``model.layers.text`` when set) whose
        input is the report's token ids. Recorded in ``layers`` and ``detected``.

        Quiet on failure: a model that cannot run the batch is reported by the caller's
        own probe, in one line.
        """
        if (
            "text_embeddings" in self.layers
            or "text" not in self.keywords
            or batch.input_ids is None
            or not self.supports_hooks
        ):
            return
        ids = batch.input_ids.to(self.device)
        # the ids as the model may hand them over: as they are, or flattened for an
        # nn.EmbeddingBag with offsets (every token, or the attended ones)
        views = [ids, ids.reshape(-1)]
        if batch.attention_mask is not None:
            views.append(ids[batch.attention_mask.to(self.device).bool()])
        root = self.layers.get("text")
        seen: list[str] = []

        def pre_hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and any(
                x.shape == v.shape and torch.equal(x, v) for v in views
            ):
                seen.append(names[m])

        names = {
            m: n
            for n, m in self.module.named_modules()
            if isinstance(m, TOKEN_EMBEDDINGS) and is_under(n, root)
        }
        handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in names]
        try:
            with torch.no_grad():
                self.logits(batch.to(self.device))
        except Exception:
            return
        finally:
            for h in handles:
                h.remove()
        if seen:
            self.layers["text_embeddings"] = self.detected["text_embeddings"] = seen[0]

    def hook_count(self) -> int:
        """Forward hooks currently registered anywhere in the model (0 outside any context)."""
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in self.module.modules())


def normalise_output(out: Any, keep_shape: bool = False) -> torch.Tensor:
    """A tensor from whatever a module returns (tensor, tuple, dict / ModelOutput with logits)."""
    if isinstance(out, torch.Tensor):
        t = out
    elif hasattr(out, "logits"):
        t = out.logits
    elif isinstance(out, dict):
        t = out.get("logits", next(iter(out.values())))
    elif isinstance(out, (tuple, list)) and out:
        t = normalise_output(out[0], keep_shape=True)
    elif hasattr(out, "last_hidden_state"):
        t = out.last_hidden_state
    else:
        raise ModelLoadError(f"the model returned {type(out).__name__}, not a tensor of logits")
    if not keep_shape and t.dim() == 1:
        t = t[:, None]
    return t
