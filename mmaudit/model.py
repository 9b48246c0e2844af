"""Load a checkpoint and wrap it as a ``ModelAdapter``.

Three sources: the built-in reference family (``checkpoint: DIR``), bring-your-own
(``factory: pkg.mod:fn`` + ``weights``) and TorchScript. The adapter knows how to
call the model from a ``Batch``, which modules are the fused embedding, the
modality encoders and the Grad-CAM layer, and how to read or replace their
outputs through hooks that are always released.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmaudit.config import ModelConfig, RuntimeConfig
from mmaudit.data import Batch
from mmaudit.errors import DeviceError, ModelLoadError

DEFAULT_KEYWORDS: dict[str, str] = {
    "image": "image",
    "text": "input_ids",
    "text_mask": "attention_mask",
    "tabular": "tabular",
}


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


def _suggest(path: str, module: nn.Module) -> str:
    names = [n for n, _ in module.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    tops = [n for n in names if "." not in n][:8]
    return "top-level modules: " + ", ".join(tops)


def detect_gradcam_layer(module: nn.Module, prefer: str | None = None) -> str | None:
    """The last Conv2d (under ``prefer`` when given) — the usual Grad-CAM target."""
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and (prefer is None or name.startswith(prefer)):
            last = name
    if last is None and prefer is not None:
        return detect_gradcam_layer(module, None)
    return last


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a readable safetensors file: {exc}") from exc
    import pickle
    import re

    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ModelLoadError(
            f"{path}: not a PyTorch file (neither a torch.save zip nor a pickle)",
            hint="weights: takes a .safetensors file or a .pt/.pth written by torch.save",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-format notices would break the one line
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelLoadError(
            f"{path}: refused: unpickling it would import and run code{what}, which could do"
            " anything on this machine (torch.load weights_only=True)",
            hint="save model.state_dict() (torch.save or safetensors) and point weights: at it",
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: cannot read weights: {type(exc).__name__}: {exc}",
            hint="weights: takes a .safetensors file or a .pt/.pth written by torch.save",
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return obj


def _fit_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    from mmaudit.models.checkpoint import fit_state_dict

    fit_state_dict(
        module,
        state,
        f"{path}: weights do not fit the model built by the factory",
        hint="check model.factory and model.kwargs match the training code",
    )


def _import_factory(spec: str, python_path: list[Path]) -> Callable[..., nn.Module]:
    for p in python_path:
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:
        raise ModelLoadError(
            f"model.factory '{spec}': cannot import module '{mod_name}':"
            f" {type(exc).__name__}: {exc}",
            hint="add its folder to model.python_path",
        ) from exc
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        names = [n for n in dir(mod) if not n.startswith("_")]
        close = difflib.get_close_matches(fn_name, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else ""
        raise ModelLoadError(f"model.factory '{spec}': no function '{fn_name}' in {mod_name}", hint)
    return fn


def load_model(
    cfg: ModelConfig, modalities: tuple[str, ...], runtime: RuntimeConfig | None = None
) -> ModelAdapter:
    """Load the model named by the config and wrap it; ModelLoadError / DeviceError otherwise."""
    runtime = runtime or RuntimeConfig()
    device = resolve_device(runtime.device)
    detected: dict[str, str] = {}
    hooks_ok = True
    if cfg.checkpoint is not None:
        from mmaudit.models import load_checkpoint

        module, spec = load_checkpoint(cfg.checkpoint)
        source = f"builtin:{cfg.checkpoint}"
        keywords = dict(module.modality_keywords)
        default_layers = module.default_layers()
        model_modalities = tuple(spec.modalities)
    elif cfg.factory is not None:
        fn = _import_factory(cfg.factory, cfg.python_path)
        try:
            module = fn(**cfg.kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"model.factory '{cfg.factory}' raised {type(exc).__name__}: {exc}",
                hint="check model.kwargs",
            ) from exc
        if not isinstance(module, nn.Module):
            raise ModelLoadError(
                f"model.factory '{cfg.factory}' returned {type(module).__name__}, not an nn.Module"
            )
        if cfg.weights is not None:
            _fit_state_dict(module, _load_state_dict_file(cfg.weights), cfg.weights)
        source = f"factory:{cfg.factory}"
        keywords = _default_keywords(module, modalities)
        default_layers = {}
        model_modalities = modalities
    else:
        path = cfg.torchscript
        assert path is not None
        if not path.is_file():
            raise ModelLoadError(f"TorchScript file not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's deprecation notice would break one line
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a loadable TorchScript file: {exc}") from exc
        source = f"torchscript:{path}"
        keywords = _default_keywords(module, modalities)
        default_layers = {}
        model_modalities = modalities
        hooks_ok = False
    missing_mod = [m for m in modalities if m not in model_modalities]
    if missing_mod:
        raise ModelLoadError(
            f"the data configures {missing_mod} but the checkpoint takes only"
            f" {list(model_modalities)}",
            hint="remove that modality from data: or use a checkpoint that takes it",
        )
    keywords.update(cfg.inputs)
    keywords = {
        k: v for k, v in keywords.items() if k in modalities or k in ("text_mask", "present")
    }
    if "text" not in modalities:
        keywords.pop("text_mask", None)
    check_keywords(module, keywords)
    layers = dict(default_layers)
    for k in default_layers:
        detected[k] = default_layers[k]
    if "gradcam" not in layers and "image" in modalities and hooks_ok:
        found = detect_gradcam_layer(module, cfg.layers.get("image") or layers.get("image"))
        if found:
            layers["gradcam"] = found
            detected["gradcam"] = found
    for k, v in cfg.layers.items():
        layers[k] = v
        detected.pop(k, None)
    if hooks_ok:
        for k, v in layers.items():
            try:
                module.get_submodule(v)
            except AttributeError as exc:
                raise ModelLoadError(
                    f"model.layers.{k}: no module '{v}' in the model", hint=_suggest(v, module)
                ) from exc
    layers = {
        k: v for k, v in layers.items() if k not in ("image", "text", "tabular") or k in modalities
    }
    return ModelAdapter(
        module,
        source=source,
        modalities=modalities,
        keywords=keywords,
        layers=layers,
        detected=detected,
        device=device,
        precision=runtime.precision,
        scriptable_hooks=hooks_ok,
        model_modalities=model_modalities,
    )


def forward_parameters(module: nn.Module) -> tuple[list[str], list[str]] | None:
    """The keyword names ``module.forward`` takes and those it requires (no default), or
    None when any keyword goes (``**kwargs``) or the signature cannot be read.

    TorchScript methods have no Python signature; their schema lists the arguments.
    """
    schema = getattr(module.forward, "schema", None)
    if schema is not None:
        args = [a for a in schema.arguments if a.name != "self"]
        return [a.name for a in args], [a.name for a in args if not a.has_default_value()]
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    return [p.name for p in named], [p.name for p in named if p.default is inspect.Parameter.empty]


def _default_keywords(module: nn.Module, modalities: tuple[str, ...]) -> dict[str, str]:
    """Default forward keywords, keeping only those the forward signature accepts."""
    keywords = {k: v for k, v in DEFAULT_KEYWORDS.items() if k in modalities or k == "text_mask"}
    found = forward_parameters(module)
    if found is None:
        return keywords
    params = found[0]
    if "present" in params:
        keywords["present"] = "present"
    if "text_mask" in keywords and keywords["text_mask"] not in params:
        keywords.pop("text_mask")
    return keywords


def check_keywords(module: nn.Module, keywords: dict[str, str]) -> None:
    """ModelLoadError when the forward does not take a keyword the adapter will pass, or
    needs one it will not: caught here, not as a TypeError on the first batch."""
    found = forward_parameters(module)
    if found is None:
        return
    params, required = found
    passed = set(keywords.values())
    unknown = [v for v in keywords.values() if v not in params]
    unfed = [p for p in required if p not in passed]
    if not unknown and not unfed:
        return
    problem = (
        f"it would be called with {', '.join(unknown)}"
        if unknown
        else f"nothing is passed for {', '.join(unfed)}"
    )
    raise ModelLoadError(
        f"the model's forward takes ({', '.join(params)}); {problem}",
        hint="map each modality to a forward parameter with model.inputs,"
        " e.g. inputs: {image: pixel_values, tabular: labs}",
    )
