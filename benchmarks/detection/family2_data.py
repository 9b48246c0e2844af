"""Family 2's studies: a generator written apart from ``mmaudit.sample.generate``.

Why: a benchmark built by the sample's own generator, with the sample's marker shape, can
only show that the audit finds the sample's shortcut. This one shares no code with it: an
axial abdominal slice (body, spine, kidneys; the liver is the ROI mask) whose finding is a
*dark* hypodense lesion in the liver, under multiplicative speckle and horizontal streak
noise (the sample: a bright opacity in the lungs under smooth Gaussian noise); site-tied
markers of three shapes (``ring``, ``glyph`` -- a letter "R" as a scanner would burn in --,
``bar``) at any size and corner; a site sentence closing or opening the report; a site-coded
lab column (any of the five, shifted by a chosen number of SDs).

Every random draw of a study comes from its own generator seeded by (seed, index, purpose),
and the cue (marker, phrase, lab shift) is applied last, so :func:`generate_family2` with
``cue=False`` renders the very same studies without their cue: the counterfactual that
``intervention.measure`` needs.

The interaction recipes (``interaction=``: :data:`INTERACTIONS`) take the label away from the
image and the ordinary report and labs, and write two hidden binary states instead: state A
as a sentence of the report (:data:`STATE_SENTENCES`), state B as bilirubin shifted by
:data:`STATE_SHIFT` SD. ``redundant``: both states restate the label (either one alone
predicts it); ``synergy``: the label is A XOR B (neither alone says anything); ``additive``:
the label's log-odds are a sum of one term per state. ``report_state`` / ``lab_state``
render the same studies with a state ``flipped`` or ``removed`` (sentence left out,
bilirubin set to the midpoint of the two states' means, for every study): the
counterfactuals ``interaction.measure_interaction`` needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LAB_COLUMNS",
    "INTERACTIONS",
    "STATE_LAB",
    "STATE_SENTENCES",
    "STATE_SHIFT",
    "SITE_PHRASES",
    "SHAPES",
    "CORNERS",
    "IMAGE_SIZE",
    "MAX_TOKENS",
    "marker_mask",
    "generate_family2",
    "family2_data_config",
]

IMAGE_SIZE = 64
MAX_TOKENS = 32
LAB_COLUMNS = ["alt", "ast", "bilirubin", "albumin", "inr"]
SHAPES = ("ring", "glyph", "bar")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
_SITES = ("north", "south")  # the marker, phrase and lab cue belong to "south"
_LABS = {  # mean, SD, shift of a positive study in SDs
    "alt": (35.0, 12.0, 1.0),
    "ast": (30.0, 10.0, 0.8),
    "bilirubin": (0.9, 0.3, 0.7),
    "albumin": (4.0, 0.45, 0.0),
    "inr": (1.05, 0.12, 0.0),
}
_GLYPH_R = np.array(  # 5 x 7 bitmap of the letter R
    [
        [1, 1, 1, 1, 0],
        [1, 0, 0, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 0],
        [1, 0, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 0, 1],
    ],
    dtype=bool,
)
_POS = [
    "Hypodense lesion in hepatic segment {seg}.",
    "Ill-defined low-attenuation focus in segment {seg}.",
    "Rim-enhancing collection in segment {seg}, likely abscess.",
]
_NEG = ["Liver of homogeneous attenuation.", "No focal hepatic lesion.", "Liver unremarkable."]
_VAGUE = ["Limited study due to motion.", "Comparison not available.", ""]
_OPENERS = ["Axial CT abdomen.", "Portal venous phase.", "Non-contrast CT of the abdomen."]
#: the site-south report cues: where the words go, and the words (family 2's own vocabulary;
#: the sample's phrases name its clinics). ``footer`` ends the report, ``header`` opens it.
SITE_PHRASES: dict[str, tuple[str, str]] = {
    "footer": ("end", "Acquired on the south campus scanner."),
    "header": ("start", "Southgate imaging annex, protocol B."),
}

#: the interaction recipes: how the label follows the two hidden states
INTERACTIONS = ("redundant", "synergy", "additive")
#: state A, written in the report: its sentence when A is 1 and when A is 0
STATE_SENTENCES = {1: "Intrahepatic bile ducts are dilated.", 0: "Bile ducts of normal calibre."}
#: state B, written in the labs: this column shifted by STATE_SHIFT SD when B is 1
STATE_LAB = "bilirubin"
STATE_SHIFT = 3.0
#: redundant: the share of reports whose state A contradicts the label
_REDUNDANT_DISCORDANT = 0.02
#: additive: log-odds of a positive label = this x ((2A - 1) + (2B - 1))
_ADDITIVE_WEIGHT = 2.2
_STATE_RENDERS = ("drawn", "flipped", "removed")


def marker_mask(shape: str, size: int, corner: str, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The marker's pixels (bool, image-sized): ``shape`` at ``size`` px, 2 px from ``corner``."""
    if shape not in SHAPES:
        raise ValueError(f"marker shape must be one of {SHAPES}, got {shape!r}")
    if corner not in CORNERS:
        raise ValueError(f"marker corner must be one of {CORNERS}, got {corner!r}")
    if not 3 <= size <= image_size // 4:
        raise ValueError(f"marker size must be 3..{image_size // 4} px, got {size}")
    h, w = size, size
    if shape == "ring":
        rr, cc = np.mgrid[0:h, 0:w] + 0.5
        r = np.hypot(rr - h / 2, cc - w / 2)
        patch = (r <= h / 2) & (r >= h / 2 - max(1.0, h / 4))
    elif shape == "glyph":
        rows = np.minimum((np.arange(h) * 7) // h, 6)
        cols = np.minimum((np.arange(w) * 5) // w, 4)
        patch = _GLYPH_R[np.ix_(rows, cols)]
    else:  # a horizontal bar, twice as wide as tall
        w, h = min(2 * size, image_size // 3), max(2, size // 2)
        patch = np.ones((h, w), dtype=bool)
    out = np.zeros((image_size, image_size), dtype=bool)
    r0 = 2 if corner.startswith("top") else image_size - 2 - h
    c0 = 2 if corner.endswith("left") else image_size - 2 - w
    out[r0 : r0 + h, c0 : c0 + w] = patch
    return out


def _render(seed: int, i: int, sex: str, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """One slice (float grey levels) and its liver mask; no cue."""
    rng = np.random.default_rng([seed, i, 11])
    s = IMAGE_SIZE
    rr, cc = np.mgrid[0:s, 0:s].astype(np.float64)
    img = np.full((s, s), 15.0)
    half_w = (27.0 if sex == "M" else 24.5) + rng.normal(0, 0.7)
    half_h = 19.0 + rng.normal(0, 0.7)
    cy, cx = 33.0 + rng.normal(0, 0.6), 32.0 + rng.normal(0, 0.6)
    body = ((rr - cy) / half_h) ** 2 + ((cc - cx) / half_w) ** 2 <= 1.0
    img[body] = 95.0 + rng.normal(0, 3)
    liver = ((rr - (cy - 3)) / 9.5) ** 2 + ((cc - (cx - 10)) / 12.5) ** 2 <= 1.0
    liver &= body
    img[liver] = 125.0 + rng.normal(0, 3)
    for side in (-1, 1):  # kidneys
        k = ((rr - (cy + 8)) / 4.0) ** 2 + ((cc - (cx + side * 11)) / 2.8) ** 2 <= 1.0
        img[k] = 140.0
    spine = (rr - (cy + 12)) ** 2 + (cc - cx) ** 2 <= 16.0
    img[spine] = 200.0
    if positive:
        inside = np.flatnonzero(liver.ravel())
        at = inside[rng.integers(0, len(inside))]
        ly, lx = divmod(int(at), s)
        sigma = rng.uniform(2.0, 3.5)
        amp = rng.uniform(35.0, 55.0)
        img -= amp * np.exp(-((rr - ly) ** 2 + (cc - lx) ** 2) / (2 * sigma**2)) * liver
    img *= rng.gamma(16.0, 1.0 / 16.0, img.shape)  # speckle
    img += 4.0 * np.sin(rr * rng.uniform(0.8, 1.4) + rng.uniform(0, 6.3))  # streaks
    img += rng.normal(0.0, 2.0, img.shape)
    return img, liver


def _report(rng: np.random.Generator, positive: bool) -> str:
    parts = [str(rng.choice(_OPENERS))]
    u = rng.random()
    if u < 0.15:
        parts.append(str(rng.choice(_VAGUE)))
    else:
        says = positive if u > 0.25 else not positive  # 10 % discordant reads
        seg = str(rng.choice(["II", "IV", "VI", "VII", "VIII"]))
        parts.append(str(rng.choice(_POS)).format(seg=seg) if says else str(rng.choice(_NEG)))
    return " ".join(p for p in parts if p)


def _states(
    rng: np.random.Generator, label: np.ndarray, interaction: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, state A, state B) of an interaction recipe; ``redundant`` keeps the site's
    label and restates it in both states, the others draw the states and set the label."""
    n = len(label)
    coin_a, coin_b, u = rng.integers(0, 2, n), rng.integers(0, 2, n), rng.random(n)
    if interaction == "redundant":
        return label, np.where(u < _REDUNDANT_DISCORDANT, 1 - label, label), label.copy()
    if interaction == "synergy":
        return coin_a ^ coin_b, coin_a, coin_b
    logit = _ADDITIVE_WEIGHT * ((2 * coin_a - 1) + (2 * coin_b - 1))
    return (u < 1.0 / (1.0 + np.exp(-logit))).astype(int), coin_a, coin_b


def _state_report(seed: int, i: int, state_a: int, how: str) -> str:
    """An interaction recipe's report: an opener and state A's sentence (none when
    ``removed``; the other sentence when ``flipped``)."""
    opener = str(np.random.default_rng([seed, i, 12]).choice(_OPENERS))
    if how == "removed":
        return opener
    return f"{opener} {STATE_SENTENCES[1 - state_a if how == 'flipped' else state_a]}"


def generate_family2(
    out_dir: Path,
    n: int,
    seed: int,
    *,
    rho: float = 0.0,
    marker: str | None = None,
    marker_size: int = 7,
    marker_corner: str = "top-left",
    phrase: bool | str = False,
    lab_cue: str | None = None,
    lab_shift: float = 2.0,
    cue: bool = True,
    interaction: str | None = None,
    report_state: str = "drawn",
    lab_state: str = "drawn",
) -> Any:
    """Write ``n`` studies (images, liver masks, ``manifest.csv``) into ``out_dir``.

    ``rho``: correlation between site ``south`` and the label (prevalences 0.5 -/+ rho/2).
    The cues, all on ``south``: ``marker`` (a shape of :data:`SHAPES` at ``marker_size`` px in
    ``marker_corner``), ``phrase`` (a site sentence of :data:`SITE_PHRASES`: ``"footer"`` or
    True ends the report with it, ``"header"`` opens the report with another), ``lab_cue``
    (that lab column shifted by ``lab_shift`` SD). ``cue=False`` renders the same studies
    without any of them. ``interaction`` (one of :data:`INTERACTIONS`): the label follows two
    hidden states, A in the report and B in the labs, and no lesion is drawn;
    ``report_state`` / ``lab_state`` (``drawn``, ``flipped``, ``removed``) render the same
    studies with that state inverted or left out. Returns the manifest as a DataFrame.
    """
    import pandas as pd
    from PIL import Image

    if phrase is True:
        phrase = "footer"
    if phrase and phrase not in SITE_PHRASES:
        raise ValueError(f"phrase must be one of {list(SITE_PHRASES)} or a bool, got {phrase!r}")
    where, words = SITE_PHRASES[phrase] if phrase else ("", "")
    if lab_cue is not None and lab_cue not in LAB_COLUMNS:
        raise ValueError(f"lab_cue must be one of {LAB_COLUMNS}, got {lab_cue!r}")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must be in [0, 1), got {rho}")
    if interaction is not None and interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
    for name, how in (("report_state", report_state), ("lab_state", lab_state)):
        if how not in _STATE_RENDERS:
            raise ValueError(f"{name} must be one of {_STATE_RENDERS}, got {how!r}")
    mark = marker_mask(marker, marker_size, marker_corner) if marker else None
    out_dir = Path(out_dir)
    for sub in ("images", "masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    site = np.array(_SITES)[rng.permutation(np.arange(n) % 2)]
    sex = np.array(["F", "M"])[rng.integers(0, 2, n)]
    age = np.round(np.clip(rng.normal(55.0, 15.0, n), 18, 90), 0)
    prevalence = np.where(site == "south", 0.5 + rho / 2, 0.5 - rho / 2)
    label = (rng.random(n) < prevalence).astype(int)
    split = np.where(rng.random(n) < 0.6, "train", "test")
    # the interaction recipes' labs carry only state B (drawn from the same stream)
    tied = 0 if interaction else 1
    labs = {
        c: np.round(rng.normal(m + tied * k * sd * label, sd), 3) for c, (m, sd, k) in _LABS.items()
    }
    state_a = state_b = None
    if interaction:
        label, state_a, state_b = _states(np.random.default_rng([seed, 1]), label, interaction)
        mean, sd, _ = _LABS[STATE_LAB]
        if lab_state == "removed":  # mean imputation: the midpoint of the two states
            labs[STATE_LAB] = np.full(n, round(mean + 0.5 * STATE_SHIFT * sd, 3))
        else:
            b = state_b if lab_state == "drawn" else 1 - state_b
            labs[STATE_LAB] = np.round(labs[STATE_LAB] + STATE_SHIFT * sd * b, 3)
    if cue and lab_cue is not None:
        labs[lab_cue] = labs[lab_cue] + lab_shift * _LABS[lab_cue][1] * (site == "south")
    width = max(4, len(str(n)))
    ids = [f"f{i + 1:0{width}d}" for i in range(n)]
    reports = []
    for i, sid in enumerate(ids):
        img, liver = _render(seed, i, str(sex[i]), bool(label[i]) and not interaction)
        if cue and mark is not None and site[i] == "south":
            img[mark] = 240.0 + np.random.default_rng([seed, i, 13]).normal(0, 3, mark.sum())
        Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="L").save(
            out_dir / "images" / f"{sid}.png"
        )
        Image.fromarray((liver * 255).astype(np.uint8), mode="L").save(
            out_dir / "masks" / f"{sid}.png"
        )
        if state_a is None:
            text = _report(np.random.default_rng([seed, i, 12]), bool(label[i]))
        else:
            text = _state_report(seed, i, int(state_a[i]), report_state)
        if cue and where and site[i] == "south":
            text = f"{text} {words}" if where == "end" else f"{words} {text}"
        reports.append(text)
    frame = pd.DataFrame(
        {
            "id": ids,
            "patient_id": [f"q{i + 1:0{width}d}" for i in range(n)],
            "split": split,
            "site": site,
            "sex": sex,
            "age": age,
            "label": label,
            "image_path": [f"images/{s}.png" for s in ids],
            "mask_path": [f"masks/{s}.png" for s in ids],
            "report": reports,
            **labs,
        }
    )
    frame.to_csv(out_dir / "manifest.csv", index=False)
    return frame


def family2_data_config(
    folder: Path, split: list[str], stats: dict[str, tuple[float, float]], tokenizer: Path
) -> Any:
    """The audit's data section for a family-2 folder (labs normalised by train ``stats``)."""
    from mmaudit.engine.config import DataConfig

    return DataConfig.model_validate(
        {
            "manifest": Path(folder) / "manifest.csv",
            "id": "id",
            "patient": "patient_id",
            "target": {"column": "label"},
            "image": {
                "column": "image_path",
                "roi_mask": "mask_path",
                "size": IMAGE_SIZE,
                "channels": 1,
                "mean": [0.4],
                "std": [0.3],
            },
            "text": {"column": "report", "tokenizer": tokenizer, "max_length": MAX_TOKENS},
            "tabular": {
                "columns": LAB_COLUMNS,
                "normalization": "given",
                "mean": {k: v[0] for k, v in stats.items()},
                "std": {k: v[1] for k, v in stats.items()},
            },
            "attributes": {
                "site": {},
                "sex": {},
                "age": {"kind": "continuous", "bins": [40, 60, 75]},
            },
            "split": {"column": "split", "values": split},
        }
    )
