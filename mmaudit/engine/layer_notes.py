"""What each missing layer costs: the notes a run prints when ``model.layers`` lacks one a
check declares (which checks or parts are skipped, and how many extra forward passes the
fallback costs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmaudit.engine.adapter import ModelAdapter

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
    drops and EMAP's R x M mixes (mirrors the ``checks/ablation`` package; an estimate)."""
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
