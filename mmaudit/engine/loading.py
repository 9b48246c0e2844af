"""Load a checkpoint and wrap it as a ``ModelAdapter``.

Three sources: the built-in reference family (``checkpoint: DIR``), bring-your-own
(``factory: pkg.mod:fn`` + ``weights``) and TorchScript. A state_dict is read with
``weights_only``; the forward's keywords are checked against what mmaudit will pass before
anything runs.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mmaudit.engine.adapter import ModelAdapter, resolve_device
from mmaudit.engine.config import ModelConfig, RuntimeConfig
from mmaudit.engine.errors import ModelLoadError
from mmaudit.engine.layer_detection import (
    STATIC_RULE,
    detect_gradcam_layer,
    detect_text_embedding_layer,
)

DEFAULT_KEYWORDS: dict[str, str] = {
    "image": "image",
    "text": "input_ids",
    "text_mask": "attention_mask",
    "tabular": "tabular",
}


def _suggest(path: str, module: nn.Module) -> str:
    names = [n for n, _ in module.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    tops = [n for n in names if "." not in n][:8]
    return "top-level modules: " + ", ".join(tops)


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
    rules = getattr(module, "layer_rules", None)
    if cfg.checkpoint is not None and callable(rules):
        detected.update({f"{k}_rule": v for k, v in rules().items() if k in default_layers})
    if "gradcam" not in layers and "image" in modalities and hooks_ok:
        # no forward can run before the data is read: the saliency check's probe replaces
        # this guess by the feature map feeding the global pool (detect_cam_target)
        found = detect_gradcam_layer(module, cfg.layers.get("image") or layers.get("image"))
        if found:
            layers["gradcam"] = found
            detected["gradcam"] = found
            detected["gradcam_rule"] = STATIC_RULE
    for k, v in cfg.layers.items():
        layers[k] = v
        detected.pop(k, None)
        detected.pop(f"{k}_rule", None)
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
