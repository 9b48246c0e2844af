"""Family 2's variants: the independent generator (``family2_data``) and model classes
(``family2_models``), with the same effect names as family 1 so the tables put the two
side by side.

Each recipe is run with the gated-pooling CNN (``f2_<name>``) and with the MiniLM model
(``f2_<name>_minilm``, skipped when the optional package is absent). Markers come in three
shapes (ring, glyph, bar) at several sizes, the corner varying by seed; a site sentence in the
report (closing it, or another opening it) and a site-coded lab column (albumin, INR) are the
text and tabular cues, each strong (rho 0.9), weaker (rho 0.6, other words / column) and
independent of the label (rho 0: a visible cue the model has no reason to use, a negative).
Every cue variant but the clean one has a removable cue (``cue_off``: the generator's
``cue=False``), so what counts as "used" is measured, not assumed.

The interaction recipes (:data:`F2_INTERACTIONS`) put the label in a report state and a lab
state instead: redundant (each restates it), synergistic (their XOR) and additive. The ablation
check's ``redundant_pair`` and ``no_interaction`` claims are scored against what the
checkpoint measurably does with the two states (``interaction.py``).
"""

from __future__ import annotations

from typing import Any

from benchmarks.detection.variants import Expectation, Variant, use_expectations

__all__ = ["family2_variants", "F2_INTERACTIONS", "F2_RECIPES"]

_OFF: dict[str, Any] = {"cue": False}
#: generator keywords that plant a removable cue
_CUES = ("marker", "phrase", "lab_cue")


def _text_claims(effect: str, primary: bool, present: bool = True) -> tuple[Expectation, ...]:
    """The claims that a report phrase is used: attribution's site word, probing's ``used``
    for site. ``present`` is the recipe's guess; the measured truth replaces it."""
    return (
        Expectation(effect, "attribution", "site_word", "*", "warn", present, primary, True),
        Expectation(effect, "probing", "used", "*site*", "fail", present, False, True),
    )


def _lab_claims(
    effect: str, column: str, primary: bool, present: bool = True
) -> tuple[Expectation, ...]:
    """The claims that the site-coded lab ``column`` is used: attribution's site feature on
    that column, probing's ``used`` for site (recipe guess ``present``, truth replaces it)."""
    return (
        Expectation(
            effect, "attribution", "site_feature", f"*{column}*", "warn", present, primary, True
        ),
        Expectation(effect, "probing", "used", "*site*", "fail", present, False, True),
    )


#: name -> (kind, description, generator keywords, expectations, vary corner by seed)
F2_RECIPES: dict[str, tuple[str, str, dict[str, Any], tuple[Expectation, ...], bool]] = {
    "clean": (
        "clean",
        "family 2, no cue, prevalence equal by site: every shortcut check must stay quiet",
        {"rho": 0.0},
        (),
        False,
    ),
    "marker_indep": (
        "clean",
        "family 2, a ring marker on site south independent of the label (rho 0)",
        {"rho": 0.0, "marker": "ring", "marker_size": 7},
        (
            *use_expectations("marker_indep", primary=True, present=False),
            Expectation("marker_indep", "embedding", "dataset_identity", "*site*"),
            Expectation("marker_indep", "probing", "encoded", "*site*"),
        ),
        True,
    ),
    "ring": (
        "planted",
        "family 2, ring marker (7 px) on site south, site-label correlation 0.9",
        {"rho": 0.9, "marker": "ring", "marker_size": 7},
        (
            *use_expectations("marker", primary=True),
            Expectation("marker", "embedding", "dataset_identity", "*site*"),
        ),
        True,
    ),
    "glyph": (
        "planted",
        "family 2, burnt-in letter R (9 px) on site south, site-label correlation 0.9",
        {"rho": 0.9, "marker": "glyph", "marker_size": 9},
        (
            *use_expectations("marker", primary=True),
            Expectation("marker", "embedding", "dataset_identity", "*site*"),
        ),
        True,
    ),
    "bar": (
        "planted",
        "family 2, bar marker (10 x 3 px) on site south, site-label correlation 0.9",
        {"rho": 0.9, "marker": "bar", "marker_size": 5},
        (
            *use_expectations("marker", primary=True),
            Expectation("marker", "embedding", "dataset_identity", "*site*"),
        ),
        True,
    ),
    "glyph_small_rho60": (
        "planted",
        "family 2, small letter R (5 px), site-label correlation 0.6",
        {"rho": 0.6, "marker": "glyph", "marker_size": 5},
        use_expectations("marker_weak", primary=False),
        True,
    ),
    "phrase": (
        "planted",
        "family 2, a site sentence ends every south report, site-label correlation 0.9",
        {"rho": 0.9, "phrase": True},
        _text_claims("text_site_token", primary=True),
        False,
    ),
    "phrase_header_rho60": (
        "planted",
        "family 2, another site sentence opens every south report, site-label correlation 0.6",
        {"rho": 0.6, "phrase": "header"},
        _text_claims("text_site_token_rho60", primary=False),
        False,
    ),
    "phrase_indep": (
        "clean",
        "family 2, the site sentence ends every south report, independent of the label (rho 0)",
        {"rho": 0.0, "phrase": True},
        _text_claims("text_site_token_indep", primary=True, present=False),
        False,
    ),
    "lab": (
        "planted",
        "family 2, albumin shifted 2 SD on site south, site-label correlation 0.9",
        {"rho": 0.9, "lab_cue": "albumin", "lab_shift": 2.0},
        _lab_claims("tabular_site_column", "albumin", primary=True),
        False,
    ),
    "lab_inr_rho60": (
        "planted",
        "family 2, INR shifted 1.5 SD on site south, site-label correlation 0.6",
        {"rho": 0.6, "lab_cue": "inr", "lab_shift": 1.5},
        _lab_claims("tabular_site_column_rho60", "inr", primary=False),
        False,
    ),
    "lab_indep": (
        "clean",
        "family 2, albumin shifted 2 SD on site south, independent of the label (rho 0)",
        {"rho": 0.0, "lab_cue": "albumin", "lab_shift": 2.0},
        _lab_claims("tabular_site_column_indep", "albumin", primary=True, present=False),
        False,
    ),
}


def _interaction_claims(
    effect: str, redundant: bool, additive: bool, primary: str
) -> tuple[Expectation, ...]:
    """The ablation check's claims about the report x labs pair: ``redundant_pair`` on that
    pair and ``no_interaction``, each expected as the checkpoint measures (``redundant``,
    ``additive``: the recipe's guess); ``primary`` names the claim the recipe is built for."""
    return (
        Expectation(
            effect,
            "ablation",
            "redundant_pair",
            "*text_x_tabular*",
            "warn",
            redundant,
            primary == "redundant",
            truth_of="redundant",
        ),
        Expectation(
            effect,
            "ablation",
            "no_interaction",
            "*",
            "warn",
            additive,
            primary == "additive",
            truth_of="additive",
        ),
    )


#: the interaction recipes: report state A and lab state B carry the label; name ->
#: (description, generator keywords, expectations)
F2_INTERACTIONS: dict[str, tuple[str, dict[str, Any], tuple[Expectation, ...]]] = {
    "redundant": (
        "family 2, report and labs each restate the label (no lesion)",
        {"rho": 0.0, "interaction": "redundant"},
        _interaction_claims("redundant_pair", True, False, "redundant"),
    ),
    "synergy": (
        "family 2, label = report state XOR lab state (no lesion): neither alone predicts it",
        {"rho": 0.0, "interaction": "synergy"},
        _interaction_claims("synergy", False, False, "additive"),
    ),
    "additive": (
        "family 2, label log-odds = report term + lab term (no lesion): nothing to combine",
        {"rho": 0.0, "interaction": "additive"},
        _interaction_claims("additive", False, True, "additive"),
    ),
}


def family2_variants() -> list[Variant]:
    """Every family-2 recipe with each model class (``f2_<recipe>[_minilm]``)."""
    out = []
    for model, suffix in (("gated_cnn", ""), ("minilm", "_minilm")):
        for name, (kind, desc, gen, expect, vary) in F2_RECIPES.items():
            out.append(
                Variant(
                    f"f2_{name}{suffix}",
                    f"{desc} ({model})",
                    kind,  # type: ignore[arg-type]
                    gen,
                    rho=gen.get("rho"),
                    vary_marker_pos=vary,
                    expect=expect,
                    cue_off=_OFF if any(gen.get(k) for k in _CUES) else None,
                    family=2,
                    model=model,
                )
            )
        for name, (desc, gen, expect) in F2_INTERACTIONS.items():
            out.append(
                Variant(
                    f"f2_{name}{suffix}",
                    f"{desc} ({model})",
                    "planted",
                    gen,
                    expect=expect,
                    family=2,
                    model=model,
                )
            )
    return out
