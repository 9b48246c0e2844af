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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmaudit.engine.config import ModelConfig, RuntimeConfig
from mmaudit.engine.data import Batch
from mmaudit.engine.errors import DeviceError, ModelLoadError

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
            if isinstance(m, TOKEN_EMBEDDINGS) and _under(n, root)
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


#: Module types that look token ids up; the token-embedding layer of text IG is one of them
#: (or the Hugging Face ``embeddings`` block around one).
TOKEN_EMBEDDINGS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _under(name: str, root: str | None) -> bool:
    return not root or name == root or name.startswith(root + ".")


def _embedding_block(name: str, root: str | None) -> str:
    """``name``, or its parent when that is a Hugging Face ``embeddings`` block (word +
    position embeddings and LayerNorm): IG then moves the whole token vector the encoder
    reads, as captum's BERT examples do, and the positions, the same at both ends of the
    path, cancel. Never above the text encoder named in ``model.layers.text``."""
    parent = name.rpartition(".")[0]
    if parent and parent.split(".")[-1] == "embeddings" and _under(parent, root):
        return parent
    return name


def detect_text_embedding_layer(module: nn.Module, text_root: str | None = None) -> str | None:
    """Dotted path of the token-embedding layer report-word IG interpolates, or None.

    Looked for under the text encoder (``text_root``, ``model.layers.text``) when it is
    named, else in the whole model, in this order: the input embeddings of the shallowest
    Hugging Face model there (``get_input_embeddings()``); an ``nn.Embedding`` /
    ``nn.EmbeddingBag`` named ``*word_embeddings``; under a named text encoder, its only
    one. A Hugging Face ``embeddings`` block around the match is taken whole (see
    :func:`_embedding_block`). A model with several embeddings and no text encoder named
    is left to :meth:`ModelAdapter.detect_on_batch`, which sees which one reads the ids.
    """
    named = [(n, m) for n, m in module.named_modules() if _under(n, text_root)]
    names = {id(m): n for n, m in module.named_modules()}
    for _name, m in sorted(named, key=lambda nm: nm[0].count(".") if nm[0] else -1):
        get = getattr(m, "get_input_embeddings", None)
        if not callable(get):
            continue
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(emb, TOKEN_EMBEDDINGS) and id(emb) in names:
            return _embedding_block(names[id(emb)], text_root)
    embeds = [n for n, m in named if isinstance(m, TOKEN_EMBEDDINGS)]
    words = [n for n in embeds if n.split(".")[-1] == "word_embeddings"]
    if words:
        return _embedding_block(words[0], text_root)
    if text_root and len(embeds) == 1:
        return _embedding_block(embeds[0], text_root)
    return None


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
    from mmaudit.engine.models.checkpoint import fit_state_dict

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


def factory_source_files(spec: str, python_path: list[Path]) -> list[Path]:
    """The source files that define ``model.factory``: the file of the factory callable
    itself, then the module named in ``spec`` when that is another file (a package
    re-exporting it). Part of the checkpoint's identity: without weights, the factory's
    code is the whole model, and two edits of it must not pass for one checkpoint (--resume,
    diff). A callable whose file cannot be found (a C extension) falls back to the module's.
    """
    fn = inspect.unwrap(_import_factory(spec, python_path))
    mod = sys.modules.get(spec.partition(":")[0])
    candidates: list[str | None] = []
    with contextlib.suppress(TypeError):  # a builtin, or neither function nor class
        candidates.append(inspect.getsourcefile(fn) or inspect.getfile(fn))
    candidates.append(getattr(mod, "__file__", None))
    files: list[Path] = []
    for name in candidates:
        if name and Path(name).is_file() and Path(name).resolve() not in files:
            files.append(Path(name).resolve())
    return files


def load_model(
    cfg: ModelConfig, modalities: tuple[str, ...], runtime: RuntimeConfig | None = None
) -> ModelAdapter:
    """Load the model named by the config and wrap it; ModelLoadError / DeviceError otherwise."""
    runtime = runtime or RuntimeConfig()
    device = resolve_device(runtime.device)
    detected: dict[str, str] = {}
    hooks_ok = True
    if cfg.checkpoint is not None:
        from mmaudit.engine.models import load_checkpoint

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
    if "text_embeddings" not in layers and "text" in modalities and hooks_ok:
        found = detect_text_embedding_layer(module, layers.get("text"))
        if found:
            layers["text_embeddings"] = detected["text_embeddings"] = found
    if hooks_ok:
        for k, v in layers.items():
            try:
                module.get_submodule(v)
            except AttributeError as exc:
                raise ModelLoadError(
                    f"model.layers.{k}: no module '{v}' in the model", hint=_suggest(v, module)
                ) from exc
    layers = {
        k: v
        for k, v in layers.items()
        if k not in ("image", "text", "tabular", "text_embeddings")
        or k.removesuffix("_embeddings") in modalities
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


# ----------------------------------------------------------------------------- start-up note

_ENCODER_WORDS = {"image": "image", "text": "report", "tabular": "lab"}


def _list(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _declared_effects(layer: str, checks: Sequence[Any], available: set[str]) -> list[str]:
    """What the checks' own declarations say a missing ``layer`` costs: ``requires.layers``
    -> skipped; ``layers_wanted`` -> left out (skipped when none of them is left and the
    check needs hooks, i.e. it only reads layers)."""
    effects = []
    for c in checks:
        if layer in c.requires.layers:
            effects.append(f"{c.name} is skipped")
        elif layer in c.layers_wanted:
            if c.requires.hooks and not set(c.layers_wanted) & available:
                effects.append(f"{c.name} is skipped (no layer left to read)")
            else:
                effects.append(f"{c.name} leaves it out")
    return effects


def _ablation_passes(check: Any, adapter: ModelAdapter, players: Sequence[str]) -> int:
    """Full-model passes over the data that ablation makes at the input level, where at the
    encoder level it runs only the fusion head on cached encoder outputs: the 2^M - 1
    coalitions besides the base sweep, the neutral removals of redundancy, the robustness
    drops and EMAP's R x M mixes (mirrors ``checks/ablation.py``; an estimate)."""
    p = check.params
    m = len(players)
    native = "present" in adapter.keywords
    strategy = getattr(p, "strategy", "permute")
    if strategy == "missing" and not native:
        strategy = "permute"
    neutral = "missing" if native else "mean"
    passes = 2**m - 1
    if neutral != strategy:
        passes += m + m * (m - 1) // 2  # every modality and every pair removed, neutrally
    robustness = getattr(p, "robustness_strategy", "auto")
    if (neutral if robustness == "auto" else robustness) not in (strategy, neutral):
        passes += m  # each modality dropped once more, for the robustness curves
    if getattr(p, "emap", True):
        passes += int(getattr(p, "emap_partners_input", 8)) * m
    return passes


def missing_layer_notes(adapter: ModelAdapter, checks: Sequence[Any], n_rows: int) -> list[str]:
    """One line per ``model.layers`` entry a planned check would use that is neither set nor
    detected: which checks are skipped, which run without it, and which run slower and by
    how many extra passes.

    Who is affected comes from the checks' declarations (``requires.layers``: skipped;
    ``layers_wanted``: left out); how comes from the uses a declaration cannot carry: the
    Grad-CAM target, the token embeddings of report-word IG, and the cached encoder outputs
    that ablation, attribution and saliency run on instead of the encoders. ``checks`` are
    the planned check instances (``name``, ``requires``, ``layers_wanted``, ``params``).
    A TorchScript model gets no note: every check that needs a layer says it is skipped.
    """
    if not adapter.supports_hooks:
        return []
    have = set(adapter.layers)
    by_name = {c.name: c for c in checks}
    mods = [m for m in adapter.modalities if m in adapter.keywords]
    notes: list[str] = []

    skipped: set[str] = set()

    def add(layer: str, what: str, effects: list[str]) -> None:
        # a check skipped for want of one layer is said once, under the first
        fresh = []
        for e in effects:
            name, _, rest = e.partition(" ")
            if rest.startswith("is skipped"):
                if name in skipped:
                    continue
                skipped.add(name)
            fresh.append(e)
        if fresh:
            notes.append(f"{layer} {what} not set and not detected: {'; '.join(fresh)}")

    if "embedding" not in have:
        add(
            "model.layers.embedding (the fused vector fed to the head)",
            "is",
            _declared_effects("embedding", checks, have),
        )

    lacking = [m for m in mods if m not in have]
    if lacking:
        effects = []
        words = _list([_ENCODER_WORDS[m] for m in lacking])
        abl = by_name.get("ablation")
        if abl is not None and len(mods) >= 2 and getattr(abl.params, "level", "auto") != "input":
            k = _ablation_passes(abl, adapter, mods)
            effects.append(
                f"ablation runs at the input instead of the encoder output: about {k} full-model"
                f" passes over the {n_rows} studies, where it would run only the fusion head on"
                " cached encoder outputs"
            )
        att = by_name.get("attribution")
        if att is not None:
            p = att.params
            text_ig = (
                getattr(p, "text", True)
                and "text" in mods
                and "text_embeddings" in have
                and [m for m in lacking if m != "text"]
            )
            if text_ig:
                steps = int(getattr(p, "ig_steps", 32))
                others = _list([_ENCODER_WORDS[m] for m in lacking if m != "text"])
                plural = "s" if len([m for m in lacking if m != "text"]) > 1 else ""
                effects.append(
                    f"attribution's report-word IG runs the {others} encoder{plural}"
                    f" {steps + 2} times per report ({steps} path points + 2 ends) instead of"
                    " reading the cached output"
                )
            if getattr(p, "shares", True) and len([m for m in mods if m in have]) < 2 <= len(mods):
                effects.append("attribution's modality shares are skipped (need two encoders)")
        sal = by_name.get("saliency")
        if sal is not None and "image" in mods and [m for m in lacking if m != "image"]:
            others = _list([_ENCODER_WORDS[m] for m in lacking if m != "image"])
            plural = "s" if len([m for m in lacking if m != "image"]) > 1 else ""
            effects.append(
                f"saliency runs the {others} encoder{plural} again in every Grad-CAM and IG"
                " pass instead of reading the cached output"
            )
        declared = dict.fromkeys(
            e
            for m in lacking
            for e in _declared_effects(m, [c for c in checks if c.name != "ablation"], have)
        )
        leave = [e.split(" ")[0] for e in declared if e.endswith("leaves it out")]
        effects += [e for e in declared if not e.endswith("leaves it out")]
        if leave:
            verb = "leaves" if len(leave) == 1 else "leave"
            plural = "s" if len(lacking) > 1 else ""
            effects.append(f"{_list(leave)} {verb} the {words} encoder{plural} out")
        names = ", ".join(f"model.layers.{m}" for m in lacking)
        add(
            f"{names} ({words} encoder{'s' if len(lacking) > 1 else ''})",
            "are" if len(lacking) > 1 else "is",
            effects,
        )

    sal = by_name.get("saliency")
    if (
        sal is not None
        and "image" in mods
        and "gradcam" not in have
        and getattr(sal.params, "layer", None) is None
    ):
        methods = list(getattr(sal.params, "methods", []))
        cams = [m for m in methods if m.endswith("cam")]
        rest = [m for m in methods if m not in cams]
        if cams and rest:
            verb = "runs" if len(rest) == 1 else "run"
            effect = f"saliency's {'/'.join(cams)} maps are skipped ({'/'.join(rest)} still {verb})"
        else:
            effect = "saliency is skipped (its methods are all CAMs)" if cams else ""
        add("model.layers.gradcam (no nn.Conv2d found)", "is", [effect] if effect else [])

    att = by_name.get("attribution")
    if (
        att is not None
        and getattr(att.params, "text", True)
        and "text" in mods
        and "text_embeddings" not in have
    ):
        add(
            "model.layers.text_embeddings (the token embeddings report-word IG interpolates)",
            "is",
            [
                "attribution's report-word IG is not run (the rest of attribution runs); name"
                " the nn.Embedding that reads the token ids, e.g."
                " text_encoder.embeddings.word_embeddings"
            ],
        )
    return notes
