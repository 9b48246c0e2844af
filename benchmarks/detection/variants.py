"""Named planted variants of the synthetic sample, each with the verdict an audit should give.

Why: a check is only trustworthy if it flags planted shortcuts and stays quiet on clean
models. Every variant here is a recipe for :func:`mmaudit.sample.generate.generate_sample`
(the one generator of the project, driven only by its keyword parameters), a training
recipe, and a list of :class:`Expectation` s: which check's rule should (or should not)
raise a finding on a model trained that way. The runner (``run.py``) scores the audit's
findings against these expectations.

Kinds: ``planted`` (a shortcut or structure the audit must find), ``clean`` and
``encoded_only`` (negatives: any unexpected ``fail`` finding is a false alarm), ``control``
(random weights / shuffled labels: performance must flag them), ``seed_pair`` (two training
seeds of one recipe: ``diff`` must report no regression).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmaudit.sample.generate import MARKER_POSITIONS

__all__ = [
    "Expectation",
    "Variant",
    "VARIANTS",
    "NEGATIVE_KINDS",
    "MARKER_RHOS",
    "MARKER_SIZES",
]

Kind = Literal["planted", "clean", "encoded_only", "control", "seed_pair"]
Training = Literal["trained", "random_init", "shuffled_labels"]

NEGATIVE_KINDS: tuple[str, ...] = ("clean", "encoded_only")
MARKER_RHOS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
_NO_MARKER: dict[str, Any] = {"marker_prob": (0.0, 0.0)}


@dataclass(frozen=True)
class Expectation:
    """One known-correct verdict: check ``check`` should (``present``) raise rule ``rule``.

    ``metric`` is an ``fnmatch`` pattern on the finding's metric (e.g. ``"*site*"``), and
    ``severity`` the least severity that counts (``warn`` or ``fail``). Check
    ``cross_checks`` scores the report's "across checks" summary instead (rule
    ``saliency_blind``: attribute ``metric`` is used while saliency finds no hotspot).
    ``present=False``
    means the finding must NOT appear (e.g. no "no interaction" warning on the synergy
    variant); ``primary`` marks the check meant to find the effect (the ≥ 90 % target).
    ``use`` marks a claim of use (saliency's hotspot, probing's ``used``, attribution's
    site word / feature): on a variant with a removable cue its expected presence is the
    intervention's verdict, not the recipe's.
    """

    effect: str
    check: str
    rule: str
    metric: str = "*"
    severity: str = "warn"
    present: bool = True
    primary: bool = False
    # a claim that the model *uses* the planted cue: whether it should be present is taken
    # from the measured truth (intervention.py) when the variant has a removable cue
    use: bool = False
    # score only when the check reports a metric matching this pattern (a newer rule that
    # older audits lack, e.g. saliency's off-ROI scan); "not_run" otherwise
    requires: str | None = None
    # a claim about the model's interactions (interaction.py): its expected presence is the
    # measured ``redundant`` or ``additive`` verdict of the checkpoint, not the recipe's guess
    truth_of: str | None = None


@dataclass(frozen=True)
class Variant:
    """A planted variant: generator keywords, training recipe and expected verdicts."""

    name: str
    description: str
    kind: Kind
    generator: dict[str, Any] = field(default_factory=dict)
    train_rows: Literal["all", "balanced"] = "all"
    training: Training = "trained"
    rho: float | None = None  # marker-label correlation, for the dose-response curve
    # the planted structure is only tested when the trained model learned what it needs:
    # (check, metric, least value) conditions on the audit's own metrics; a run that misses
    # one is "invalid" and left out of the rates (said so in the results)
    learned: tuple[tuple[str, str, float], ...] = ()
    vary_marker_pos: bool = False
    expect: tuple[Expectation, ...] = ()
    # generator keywords that render the same studies without the planted cue (the
    # intervention); None when the variant plants nothing removable
    cue_off: dict[str, Any] | None = None
    family: int = 1  # 1: mmaudit.sample generator + built-in model; 2: family2_*.py
    model: str = "builtin"  # family 2: a key of family2_models.MODELS

    def generator_kwargs(self, seed: int) -> dict[str, Any]:
        """Keywords for the family's generator at benchmark seed ``seed`` (marker corner by
        seed when ``vary_marker_pos``)."""
        kw = dict(self.generator)
        if self.vary_marker_pos:
            key = "marker_pos" if self.family == 1 else "marker_corner"
            kw[key] = MARKER_POSITIONS[seed % len(MARKER_POSITIONS)]
        return kw


def use_expectations(effect: str, primary: bool, present: bool = True) -> tuple[Expectation, ...]:
    """The claims that an image marker is used: saliency's hotspot, probing's ``used`` for
    site, and (when the audit has it) saliency's off-ROI grid scan. ``present`` is the
    recipe's guess, replaced by the measured truth when the run has one."""
    return (
        Expectation(effect, "saliency", "hotspot_used", "*", "fail", present, primary, True),
        Expectation(effect, "probing", "used", "*site*", "fail", present, primary, True),
        Expectation(effect, "saliency", "scan_used", "*", "warn", present, False, True, "scan.*"),
    )


def _marker_expectations(primary_ok: bool, effect: str = "marker") -> tuple[Expectation, ...]:
    return (
        *use_expectations(effect, primary_ok),
        Expectation(effect, "embedding", "dataset_identity", "*site*"),
        # the marker lifts every site-B score: error rates at the global threshold differ by
        # site (equalised odds) while the AUROC within each site barely moves
        Expectation(effect, "subgroups", "equalised_odds", "*site*", severity="warn"),
    )


_MARKER_OFF: dict[str, Any] = {"marker_prob": (0.0, 0.0)}


#: marker sides (px on the 64-px film) of the ``marker_size<NN>`` variants; the sample's is 6
MARKER_SIZES: tuple[int, ...] = (4, 9, 12)


def _marker_place_variants() -> list[Variant]:
    """A used marker (rho 0.9) pinned to each corner (``marker_<corner>``, 6 px), and at
    other sizes with the corner varying by seed (``marker_size<NN>``).

    Why: a hotspot box that cannot be placed near one corner (the ROI margin and the image
    edge leave too little room) made saliency blind there (issue 20); pinning the corner
    shows a per-corner detection rate instead of one pooled over seeds, and the sizes test a
    marker smaller than the smallest box and one larger than the default box (10 px). Each has its
    own effect name, so the rates are reported per corner and per size; ``rho`` is left
    unset so that the dose-response curve (``marker_rho*``) stays comparable."""
    out = [
        Variant(
            f"marker_{pos.replace('-', '_')}",
            f"site-B marker pinned to the {pos} corner (6 px), marker-label correlation 0.9",
            "planted",
            {"rho": 0.9, "marker_prob": (0.0, 1.0), "marker_pos": pos},
            expect=_marker_expectations(True, f"marker_{pos.replace('-', '_')}"),
            cue_off=_MARKER_OFF,
        )
        for pos in MARKER_POSITIONS
    ]
    out += [
        Variant(
            f"marker_size{size:02d}",
            f"site-B corner marker of {size} px, marker-label correlation 0.9; corner by seed",
            "planted",
            {"rho": 0.9, "marker_prob": (0.0, 1.0), "marker_size": size},
            vary_marker_pos=True,
            expect=_marker_expectations(True, f"marker_size{size:02d}"),
            cue_off=_MARKER_OFF,
        )
        for size in MARKER_SIZES
    ]
    return out


def _registry() -> dict[str, Variant]:
    v: list[Variant] = [
        Variant(
            "clean",
            "no marker, equal prevalence per site: every shortcut check must stay quiet",
            "clean",
            {"rho": 0.0, **_NO_MARKER},
            expect=(
                # true by construction, so not false alarms: the generator always leaves a
                # sex trace in the image, and the label adds up its modalities' evidence
                Expectation("sex_trace", "probing", "encoded", "*sex*"),
                # on a concat model the check exempts the rule (additive by construction)
                # and says so in a note: that note is the right answer too
                Expectation("additive_label", "ablation", "no_interaction", severity="note"),
            ),
        ),
    ]
    v.append(
        Variant(
            "marker_indep",
            "site-B corner marker independent of the label (rho 0): a cue the model should ignore",
            "clean",
            {"rho": 0.0, "marker_prob": (0.0, 1.0)},
            vary_marker_pos=True,
            cue_off=_MARKER_OFF,
            # site is visible through the marker: encoded, and a warn, by construction
            expect=(
                *use_expectations("marker_indep", primary=True, present=False),
                Expectation("marker_indep", "embedding", "dataset_identity", "*site*"),
                Expectation("marker_indep", "probing", "encoded", "*site*"),
                Expectation("sex_trace", "probing", "encoded", "*sex*"),
            ),
        )
    )
    for rho in MARKER_RHOS:
        v.append(
            Variant(
                f"marker_rho{round(rho * 100):02d}",
                f"site-B corner marker, marker-label correlation {rho}; corner varies by seed",
                "planted",
                {"rho": rho, "marker_prob": (0.0, 1.0)},
                rho=rho,
                vary_marker_pos=True,
                expect=_marker_expectations(primary_ok=rho >= 0.9),
                cue_off=_MARKER_OFF,
            )
        )
    v += _marker_place_variants()
    v += [
        Variant(
            "site_signature",
            "invisible site signature (blur, gain, grain on site B) tied to prevalence (rho 0.9)",
            "planted",
            {"rho": 0.9, **_NO_MARKER, "site_signature": 1.0},
            cue_off={"site_signature": 0.0},
            expect=(
                Expectation(
                    "site_signature", "probing", "used", "*site*", "fail", primary=True, use=True
                ),
                Expectation(
                    "site_signature", "embedding", "dataset_identity", "*site*", primary=True
                ),
                # no local hotspot to find: saliency should not be the check that sees it,
                # and the report's "across checks" summary must say so
                Expectation("signature_no_hotspot", "saliency", "hotspot_used", present=False),
                Expectation("signature_no_hotspot", "cross_checks", "saliency_blind", "site"),
            ),
        ),
        Variant(
            "text_site_token",
            "a site phrase ends every report; site tied to prevalence (rho 0.9)",
            "planted",
            {"rho": 0.9, **_NO_MARKER, "site_token_in_report": True},
            cue_off={"site_token_in_report": False},
            expect=(
                Expectation("text_site_token", "attribution", "site_word", primary=True, use=True),
                Expectation("text_site_token", "probing", "used", "*site*", "fail", use=True),
            ),
        ),
        Variant(
            "tabular_site_column",
            "lactate shifted 2.5 SD on site B; site tied to prevalence (rho 0.9)",
            "planted",
            {"rho": 0.9, **_NO_MARKER, "site_coded_lab": "lactate", "site_lab_shift": 2.5},
            cue_off={"site_coded_lab": None},
            expect=(
                Expectation(
                    "tabular_site_column",
                    "attribution",
                    "site_feature",
                    "*lactate*",
                    primary=True,
                    use=True,
                ),
                Expectation("tabular_site_column", "probing", "used", "*site*", "fail", use=True),
            ),
        ),
        Variant(
            "sex_encoded",
            "sex leaves an image trace but the label ignores it: encoded, not used",
            "encoded_only",
            {"rho": 0.0, **_NO_MARKER},
            expect=(
                Expectation("sex_encoded", "probing", "encoded", "*sex*", primary=True),
                Expectation("sex_not_used", "probing", "used", "*sex*", present=False),
            ),
        ),
        Variant(
            "sex_used",
            "prevalence +/-0.15 by sex within each site: sex encoded and used",
            "planted",
            {"rho": 0.0, **_NO_MARKER, "sex_used_by_label": True},
            expect=(Expectation("sex_used", "probing", "used", "*sex*", "fail", primary=True),),
        ),
        Variant(
            "redundant_text",
            "every report states the image finding (no empty, vague or discordant reports)",
            "planted",
            {
                "rho": 0.0,
                **_NO_MARKER,
                "p_report_empty": 0.0,
                "p_report_uninformative": 0.0,
                "p_report_discordant": 0.0,
            },
            # a redundant pair needs both modalities to predict on their own
            learned=(("ablation", "koi.image.auroc", 0.6), ("ablation", "koi.text.auroc", 0.6)),
            expect=(Expectation("redundant_text", "ablation", "redundant_pair", primary=True),),
        ),
        Variant(
            "synergy",
            "label = image opacity XOR a hidden lab state: only the two together predict it",
            "planted",
            {"rho": 0.0, **_NO_MARKER, "synergy": True},
            learned=(("performance", "auroc", 0.7),),
            expect=(
                Expectation("synergy", "ablation", "no_interaction", present=False, primary=True),
            ),
        ),
        Variant(
            "random_init",
            "control: the clean recipe's architecture with untrained weights",
            "control",
            {"rho": 0.0, **_NO_MARKER},
            training="random_init",
            expect=(
                Expectation(
                    "random_init", "performance", "auroc_low", severity="fail", primary=True
                ),
                Expectation("random_init_no_use", "probing", "used", "*site*", present=False),
            ),
        ),
        Variant(
            "shuffled_labels",
            "control: train labels permuted before training",
            "control",
            {"rho": 0.0, **_NO_MARKER},
            training="shuffled_labels",
            expect=(
                Expectation(
                    "shuffled_labels", "performance", "auroc_low", severity="fail", primary=True
                ),
            ),
        ),
        Variant(
            "seed_pair",
            "two training seeds of the clean recipe: `mmaudit diff` must report no regression",
            "seed_pair",
            {"rho": 0.0, **_NO_MARKER},
        ),
    ]
    from benchmarks.detection.family2_variants import family2_variants

    v += family2_variants()
    return {x.name: x for x in v}


VARIANTS: dict[str, Variant] = _registry()
