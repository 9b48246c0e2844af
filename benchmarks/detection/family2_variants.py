"""Family 2's variants: the independent generator (``family2_data``) and model classes
(``family2_models``), with the same effect names as family 1 so the tables put the two
side by side.

Each recipe is run with the gated-pooling CNN (``f2_<name>``) and with the MiniLM model
(``f2_<name>_minilm``, skipped when the optional package is absent). Markers come in three
shapes (ring, glyph, bar) at several sizes, the corner varying by seed; a site phrase in the
report and a site-coded lab column (albumin) are the text and tabular cues. Every variant
but the clean one has a removable cue (``cue_off``: the generator's ``cue=False``), so what
counts as "used" is measured, not assumed.
"""

from __future__ import annotations

from typing import Any

from benchmarks.detection.variants import Expectation, Variant, use_expectations

__all__ = ["family2_variants", "F2_RECIPES"]

_OFF: dict[str, Any] = {"cue": False}

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
        (
            Expectation("text_site_token", "attribution", "site_word", primary=True, use=True),
            Expectation("text_site_token", "probing", "used", "*site*", "fail", use=True),
        ),
        False,
    ),
    "lab": (
        "planted",
        "family 2, albumin shifted 2 SD on site south, site-label correlation 0.9",
        {"rho": 0.9, "lab_cue": "albumin", "lab_shift": 2.0},
        (
            Expectation(
                "tabular_site_column",
                "attribution",
                "site_feature",
                "*albumin*",
                primary=True,
                use=True,
            ),
            Expectation("tabular_site_column", "probing", "used", "*site*", "fail", use=True),
        ),
        False,
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
                    cue_off=None if kind == "clean" and "marker" not in gen else _OFF,
                    family=2,
                    model=model,
                )
            )
    return out
