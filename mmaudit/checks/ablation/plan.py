"""What the ablation check ablates, where and how: the players of the game (modalities with
data), the level of removal (encoder output or input), the removal strategy after any
fallback, the neutral removal of the redundancy ratio and the removal of the robustness
curves. Every fallback leaves a note."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmaudit.checks.contract import AuditContext

if TYPE_CHECKING:
    from mmaudit.checks.ablation.check import AblationCheck

MAX_MODALITIES = 6
#: how each removal strategy leaves a removed modality, in words for titles and notes
REMOVAL_WORDS: dict[str, str] = {
    "permute": "shuffled across patients",
    "zero": "zeroed",
    "mean": "set to the dataset mean",
    "missing": "marked missing (the model's own path)",
}


@dataclass(frozen=True)
class Plan:
    """What runs, after every fallback, and the notes that say why.

    ``neutral`` is the removal of the redundancy ratio (the model's missing path if it takes
    a presence mask, else the dataset mean); ``robustness_removal`` that of the robustness
    curves."""

    players: list[str]
    absent: list[str]
    level: str
    strategy: str
    neutral: str
    robustness_removal: str
    notes: list[str]


def plan_ablation(ctx: AuditContext, params: AblationCheck.Params) -> Plan:
    """The players, level and removals of this run, with a note for every fallback (in the
    order: absent modalities, level, strategy)."""
    notes: list[str] = []
    players, absent = _players(ctx.dataset, notes)
    level = _level(ctx, players, params.level, notes)
    strategy = _strategy(ctx, params.strategy, notes)
    return Plan(
        players=players,
        absent=absent,
        level=level,
        strategy=strategy,
        neutral="missing" if "present" in ctx.adapter.keywords else "mean",
        robustness_removal=_robustness_strategy(ctx, params.robustness_strategy, strategy),
        notes=notes,
    )


def removal_words(strategy: str) -> str:
    """The removal strategy with what it does, for table columns (``permute: shuffled ...``)."""
    return f"{strategy}: removed modalities {REMOVAL_WORDS.get(strategy, strategy)}"


def _players(ds: Any, notes: list[str]) -> tuple[list[str], list[str]]:
    """Modalities with data for at least one sample (the players of the game)."""
    players, absent = [], []
    for col, mod in enumerate(ds.modalities):
        (players if ds.present[:, col].any() else absent).append(mod)
    for mod in absent:
        notes.append(
            f"{mod} is missing for every sample: it cannot contribute and is left out of"
            f" the coalitions (check the data.{mod} column)"
        )
    if len(players) > MAX_MODALITIES:
        notes.append(f"only the first {MAX_MODALITIES} modalities are ablated")
        players = players[:MAX_MODALITIES]
    return players, absent


def _level(ctx: AuditContext, players: list[str], wanted: str, notes: list[str]) -> str:
    """The encoder level where the model allows hooks and names every modality encoder, else
    the input (noted)."""
    if wanted == "input":
        return "input"
    lacking = [m for m in players if m not in ctx.adapter.layers]
    if ctx.adapter.supports_hooks and not lacking:
        return "encoder"
    why = (
        "the model does not allow layer hooks"
        if not ctx.adapter.supports_hooks
        else f"model.layers does not name the encoder of {', '.join(lacking)}"
    )
    notes.append(
        f"ablation ran at the input, not at the encoder output: {why}; every coalition"
        " reruns the whole model (set model.layers.<modality> to speed this up)"
    )
    return "input"


def _strategy(ctx: AuditContext, wanted: str, notes: list[str]) -> str:
    """The removal strategy; 'missing' falls back to 'permute' (noted) for a model that takes
    no presence mask."""
    if wanted == "missing" and "present" not in ctx.adapter.keywords:
        notes.append(
            "strategy 'missing' needs a model that takes a presence mask (model.inputs."
            "present); removed modalities were permuted across samples instead"
        )
        return "permute"
    return wanted


def _robustness_strategy(ctx: AuditContext, wanted: str, strategy: str) -> str:
    """A missing modality in deployment takes the model's own missing path, or else is
    imputed (dataset mean); another patient's data (permute) would be a wrong modality,
    not a missing one."""
    native = "present" in ctx.adapter.keywords
    if wanted == "auto":
        return "missing" if native else "mean"
    if wanted == "missing" and not native:
        return strategy
    return wanted
