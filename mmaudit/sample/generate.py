"""Synthetic multimodal chest-X-ray-like sample with known, planted truth.

Why: an audit tool can only be judged on data where the answer is known. This
module writes a small dataset (image + lung mask, report text, five labs) in
which every signal is planted on purpose and documented in
``sample_data/README.md``:

* the disease (``label``) is a soft Gaussian opacity inside a lung field,
  moderately visible in the image, mentioned (imperfectly) in the report and
  shifting two labs (``wbc``, ``crp``) moderately and ``temp`` weakly;
* site ``B`` burns a bright square marker into the top-left corner, outside the
  lung mask, and site B has a much higher prevalence than site A: a shortcut a
  model can learn instead of the opacity;
* ``sex`` leaves a faint trace (a wider body silhouette for ``M``) that the
  label does not depend on: encoded in the image, useless for the task;
* ``spo2`` and ``lactate`` are pure noise; about 10 % of lab cells and 10 % of
  reports are missing.

A ``balanced_train`` subset of the train rows has equal prevalence per site, so
a ``clean`` checkpoint can be trained without the shortcut, while a
``shortcut`` checkpoint is trained on all train rows.

Everything is deterministic for a seed: each study is rendered from its own
``numpy`` generator seeded with ``(seed, study_index)``.

Entry points: :func:`generate_sample` and :func:`train_tokenizer`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = [
    "IMAGE_SIZE",
    "LAB_COLUMNS",
    "MANIFEST_COLUMNS",
    "MARKER_POSITIONS",
    "StudySpec",
    "generate_sample",
    "marker_box",
    "prevalence_for_rho",
    "render_study",
    "train_tokenizer",
]

IMAGE_SIZE = 64
LAB_COLUMNS: tuple[str, ...] = ("wbc", "crp", "temp", "spo2", "lactate")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "patient_id",
    "split",
    "balanced_train",
    "site",
    "sex",
    "age",
    "label",
    "image_path",
    "mask_path",
    "report",
    *LAB_COLUMNS,
)
MARKER_POSITIONS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
SITES: tuple[str, str] = ("A", "B")

# --- image geometry and intensities (8-bit grey levels, 64 x 64) -------------
_BACKGROUND = 12.0
_BODY = 150.0  # soft tissue inside the body silhouette
_MEDIASTINUM = 45.0  # added on the central band / heart
_LUNG = 68.0  # lung fields replace body intensity (air is dark)
_RIB = 13.0  # faint rib arcs
_BODY_HALF_WIDTH = {"F": 25.0, "M": 27.0}  # the sex trace: M silhouette 2 px wider per side
_BODY_CENTER = (36.0, 32.0)  # (row, col)
_BODY_HALF_HEIGHT = 31.0
_LUNG_OFFSET_X = 11.5  # lung centres at col 32 -/+ this
_LUNG_CENTER_Y = 33.0
_LUNG_HALF_W = 8.0
_LUNG_HALF_H = 15.5
_SMOOTH_NOISE_SD = 7.0  # after blur with sigma 1.5 px
_FINE_NOISE_SD = 2.0
_LESION_AMP = (19.0, 38.0)  # peak grey-level increase of the opacity, uniform
_LESION_SIGMA = (2.0, 3.2)  # Gaussian sigma in px, uniform
_LESION_INNER = 0.6  # lesion centre lies in the lung ellipse shrunk by this factor
_MARKER_VALUE = 245.0

# --- reports -----------------------------------------------------------------
_P_REPORT_EMPTY = 0.10
_P_REPORT_UNINFORMATIVE = 0.20  # of all reports
_P_REPORT_DISCORDANT = 0.15  # of informative reports: text contradicts the label
_P_LAB_MISSING = 0.10

_FINDINGS = (
    "patchy opacity",
    "focal consolidation",
    "airspace disease",
    "ill-defined opacity",
    "airspace opacity",
    "focal infiltrate",
    "hazy opacity",
    "patchy consolidation",
)
_POS_IMPRESSIONS = (
    "Findings concerning for pneumonia.",
    "Consider infection in the appropriate clinical setting.",
    "Suspicious for early pneumonia.",
    "Likely infectious process.",
    "",
)
_NEG_SENTENCES = (
    "Lungs are clear.",
    "No acute cardiopulmonary process.",
    "No focal consolidation, effusion or pneumothorax.",
    "Clear lungs bilaterally.",
    "No focal airspace disease.",
    "The lungs are well expanded and clear.",
)
_NEG_IMPRESSIONS = (
    "No acute disease.",
    "Normal chest radiograph.",
    "No evidence of pneumonia.",
    "",
)
_UNINFORMATIVE = (
    "Portable view, comparison with prior.",
    "AP portable chest radiograph. Comparison with prior study.",
    "Limited exam due to patient rotation.",
    "Lines and tubes unchanged in position.",
    "Single frontal view of the chest obtained.",
)
_VIEWS = ("PA chest.", "Frontal chest radiograph.", "AP chest.", "")
_HEART = ("Heart size is normal.", "Cardiomediastinal silhouette is within normal limits.", "")
_SITE_PHRASES = {"A": "Performed at Northfield clinic.", "B": "Performed at Riverside hospital."}

# --- labs: (mean, sd) for negatives and the shift for positives ----------------
# wbc 10^9/L normal; crp mg/L lognormal (log-space mean/sd); temp deg C normal;
# spo2 % normal clipped at 100; lactate mmol/L lognormal.
_WBC = (7.5, 2.2, 1.6)  # d ~ 0.73
_LOG_CRP = (np.log(6.0), 0.9, 0.65)  # d ~ 0.72 on log scale; medians 6 -> ~11.5 mg/L
_TEMP = (37.0, 0.45, 0.13)  # d ~ 0.29
_SPO2 = (96.0, 1.8)
_LOG_LACTATE = (np.log(1.2), 0.35)


@dataclass(frozen=True)
class StudySpec:
    """Everything needed to render one study's image and mask."""

    seed: int
    index: int
    sex: str
    label: int
    marker: bool
    marker_pos: str = "top-left"
    marker_size: int = 6
    lesion_amp_scale: float = 1.0
    signature: float = 0.0  # strength of the invisible site signature (0 = none)


@dataclass(frozen=True)
class RenderedStudy:
    """One rendered study: image and mask (uint8), the lesion map, and lesion facts."""

    image: np.ndarray
    mask: np.ndarray
    lesion: np.ndarray  # float grey-level increase added by the opacity (zeros if negative)
    lesion_row: float
    lesion_col: float
    lesion_sigma: float
    lesion_amp: float


def prevalence_for_rho(rho: float, base: float = 0.5) -> tuple[float, float]:
    """Per-site prevalences (A, B) giving marker-label correlation ``rho``.

    With equally many studies per site and a marker on every site-B image, the
    phi coefficient between marker and label is ``(pB - pA) / 2 / sqrt(p(1-p))``
    with ``p = (pA + pB) / 2``; for ``base = 0.5`` this is ``pB - pA``, so
    ``rho = 0.6`` gives the default (0.2, 0.8). Negative ``rho`` reverses it.
    """
    half = rho * np.sqrt(base * (1.0 - base))
    pa, pb = base - half, base + half
    if not (0.0 <= pa <= 1.0 and 0.0 <= pb <= 1.0):
        raise ValueError(f"rho={rho} with base={base} gives prevalences outside [0, 1]")
    return float(pa), float(pb)


def marker_box(
    marker_pos: str = "top-left", marker_size: int = 6, size: int = IMAGE_SIZE
) -> tuple[int, int, int, int]:
    """The marker's pixel box ``(row0, row1, col0, col1)`` (end-exclusive), 2 px from the edge."""
    if marker_pos not in MARKER_POSITIONS:
        raise ValueError(f"marker_pos must be one of {MARKER_POSITIONS}, got {marker_pos!r}")
    margin = 2
    r0 = margin if marker_pos.startswith("top") else size - margin - marker_size
    c0 = margin if marker_pos.endswith("left") else size - margin - marker_size
    return r0, r0 + marker_size, c0, c0 + marker_size


def _ellipse(
    rr: np.ndarray, cc: np.ndarray, cy: float, cx: float, hy: float, hx: float
) -> np.ndarray:
    """Normalised squared radius of each pixel w.r.t. an axis-aligned ellipse (<=1 inside)."""
    return ((rr - cy) / hy) ** 2 + ((cc - cx) / hx) ** 2


def render_study(spec: StudySpec, size: int = IMAGE_SIZE) -> RenderedStudy:
    """Render one chest-radiograph-like image, its lung mask and the opacity map.

    Pure function of ``spec``: the generator is seeded with ``(spec.seed, spec.index)``
    so a study looks the same whatever else is generated. Layout: dark background,
    bright body ellipse (half-width by sex), brighter mediastinum and heart, two dark
    lung ellipses (the mask), faint rib arcs, smooth noise, global gain/offset, then
    the opacity (positives) and finally the site marker, burnt in after all noise.
    """
    rng = np.random.default_rng([spec.seed, spec.index])
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    scale = size / IMAGE_SIZE

    # body silhouette (soft edge); the sex trace is its half-width
    body_hw = (_BODY_HALF_WIDTH[spec.sex] + rng.normal(0.0, 0.8)) * scale
    body_cy = (_BODY_CENTER[0] + rng.normal(0.0, 0.8)) * scale
    body_cx = (_BODY_CENTER[1] + rng.normal(0.0, 0.8)) * scale
    body = _ellipse(rr, cc, body_cy, body_cx, _BODY_HALF_HEIGHT * scale, body_hw) <= 1.0
    body_soft = gaussian_filter(body.astype(np.float64), 1.0)
    img = _BACKGROUND + (_BODY - _BACKGROUND) * body_soft

    # mediastinum: central vertical band, and the heart bulging to image right, low
    med = np.exp(-(((cc - body_cx) / (3.5 * scale)) ** 2)) * (rr > 6 * scale)
    heart = np.exp(-_ellipse(rr, cc, 44 * scale, body_cx + 4 * scale, 7 * scale, 7 * scale))
    img += _MEDIASTINUM * np.clip(med + heart, 0.0, 1.0) * body_soft

    # lung fields (air: dark) -- the mask
    mask = np.zeros((size, size), dtype=bool)
    lungs = []
    for side in (-1.0, 1.0):
        cy = (_LUNG_CENTER_Y + rng.normal(0.0, 1.0)) * scale
        cx = body_cx + side * (_LUNG_OFFSET_X + rng.normal(0.0, 0.6)) * scale
        hy = (_LUNG_HALF_H + rng.normal(0.0, 0.8)) * scale
        hx = (_LUNG_HALF_W + rng.normal(0.0, 0.5)) * scale
        lungs.append((cy, cx, hy, hx))
        mask |= _ellipse(rr, cc, cy, cx, hy, hx) <= 1.0
    lung_soft = gaussian_filter(mask.astype(np.float64), 0.8)
    lung_level = _LUNG + rng.normal(0.0, 4.0)
    img = img * (1.0 - lung_soft) + lung_level * lung_soft

    # faint rib arcs, sloping down laterally, only within the body
    ribs = np.zeros_like(img)
    first = rng.uniform(12.0, 15.0)
    for k in range(5):
        y0 = (first + 7.0 * k) * scale
        curve = y0 + 0.012 * (cc - body_cx) ** 2 / scale
        ribs += np.exp(-(((rr - curve) / (0.9 * scale)) ** 2))
    img += _RIB * np.clip(ribs, 0.0, 1.0) * body_soft * (np.abs(cc - body_cx) > 3 * scale)

    # smooth and fine noise, global exposure
    smooth = gaussian_filter(rng.normal(0.0, 1.0, img.shape), 1.5 * scale)
    img += smooth * (_SMOOTH_NOISE_SD / smooth.std())
    img += rng.normal(0.0, _FINE_NOISE_SD, img.shape)
    img = img * rng.normal(1.0, 0.05) + rng.normal(0.0, 5.0)

    # the disease: a soft opacity whose centre lies well inside one lung field
    lesion = np.zeros_like(img)
    l_row = l_col = l_sigma = l_amp = float("nan")
    if spec.label:
        cy, cx, hy, hx = lungs[int(rng.integers(0, 2))]
        radius = _LESION_INNER * np.sqrt(rng.uniform(0.0, 1.0))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        l_row = float(cy + radius * hy * np.sin(angle))
        l_col = float(cx + radius * hx * np.cos(angle))
        l_sigma = float(rng.uniform(*_LESION_SIGMA) * scale)
        l_amp = float(rng.uniform(*_LESION_AMP) * spec.lesion_amp_scale)
        blob = np.exp(-((rr - l_row) ** 2 + (cc - l_col) ** 2) / (2.0 * l_sigma**2))
        lesion = l_amp * blob * lung_soft  # confined to the lung field
        img += lesion

    # the invisible site signature: softer, brighter, grainier acquisition (no local mark);
    # its own generator, so studies without it keep their exact bytes
    if spec.signature:
        sig_rng = np.random.default_rng([spec.seed, spec.index, 7])
        img = gaussian_filter(img, 0.7 * spec.signature * scale)
        img = img * (1.0 + 0.06 * spec.signature) + 4.0 * spec.signature
        img += sig_rng.normal(0.0, 3.0 * spec.signature, img.shape)

    # the site marker: burnt-in bright square, outside the lung field
    if spec.marker:
        r0, r1, c0, c1 = marker_box(spec.marker_pos, spec.marker_size, size)
        img[r0:r1, c0:c1] = _MARKER_VALUE + rng.normal(0.0, 3.0, (r1 - r0, c1 - c0))

    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return RenderedStudy(
        image=image,
        mask=(mask * 255).astype(np.uint8),
        lesion=lesion,
        lesion_row=l_row,
        lesion_col=l_col,
        lesion_sigma=l_sigma,
        lesion_amp=l_amp,
    )


def _location_phrase(rng: np.random.Generator, row: float, col: float, size: int) -> str:
    """Anatomical phrase for an image position (radiological view: image left = patient right)."""
    side = "right" if col < size / 2 else "left"
    if row < size * 0.42:
        zone = "upper lobe" if rng.random() < 0.7 else "apex"
    elif row < size * 0.56:
        zone = (
            ("middle lobe" if side == "right" else "lingula") if rng.random() < 0.6 else "mid zone"
        )
    else:
        zone = "lower lobe" if rng.random() < 0.6 else "base"
    return f"{side} {zone}" if zone != "lingula" else "lingula"


def _make_report(
    rng: np.random.Generator,
    label: int,
    site: str,
    lesion_row: float,
    lesion_col: float,
    size: int,
    site_token_in_report: bool,
    p_empty: float,
    p_uninformative: float,
    p_discordant: float,
) -> tuple[str | None, str]:
    """A short templated report and its kind (empty / uninformative / concordant / discordant)."""
    u = rng.random()
    if u < p_empty:
        return None, "empty"
    parts: list[str] = [str(rng.choice(_VIEWS))]
    if u < p_empty + p_uninformative:
        kind = "uninformative"
        parts.append(str(rng.choice(_UNINFORMATIVE)))
    else:
        discordant = rng.random() < p_discordant
        says_positive = bool(label) != discordant
        kind = "discordant" if discordant else "concordant"
        if np.isnan(lesion_row):  # negatives (or missed findings) get a random location
            lesion_row = rng.uniform(0.3, 0.75) * size
            lesion_col = rng.choice([0.33, 0.67]) * size
        loc = _location_phrase(rng, lesion_row, lesion_col, size)
        parts.append(str(rng.choice(_HEART)))
        if says_positive:  # true finding, or a false-positive read of a negative study
            parts.append(f"{str(rng.choice(_FINDINGS)).capitalize()} in the {loc}.")
            parts.append(str(rng.choice(_POS_IMPRESSIONS)))
        else:  # negative wording (true negative, or a missed finding)
            parts.append(str(rng.choice(_NEG_SENTENCES)))
            parts.append(str(rng.choice(_NEG_IMPRESSIONS)))
    if site_token_in_report:
        parts.append(_SITE_PHRASES[site])
    return " ".join(p for p in parts if p), kind


def _assign_exact(
    rng: np.random.Generator, idx: np.ndarray, prevalence: float, out: np.ndarray
) -> None:
    """Set exactly ``round(prevalence * len(idx))`` randomly chosen rows of ``out[idx]`` to 1."""
    if len(idx) == 0:
        return
    k = int(round(float(np.clip(prevalence, 0.0, 1.0)) * len(idx)))
    chosen = rng.permutation(idx)[:k]
    out[idx] = 0
    out[chosen] = 1


def _balanced_subset(
    rng: np.random.Generator, labels: np.ndarray, sites: np.ndarray, rows: np.ndarray, q: float
) -> np.ndarray:
    """Largest subset of ``rows`` with prevalence ``q`` in every site (by subsampling)."""
    keep = np.zeros(len(labels), dtype=bool)
    for site in SITES:
        in_site = rows[sites[rows] == site]
        pos = rng.permutation(in_site[labels[in_site] == 1])
        neg = rng.permutation(in_site[labels[in_site] == 0])
        total = min(len(pos) / q if q > 0 else np.inf, len(neg) / (1 - q) if q < 1 else np.inf)
        n_pos = int(round(total * q))
        n_neg = int(round(total * (1 - q)))
        keep[pos[: min(n_pos, len(pos))]] = True
        keep[neg[: min(n_neg, len(neg))]] = True
    return keep


def generate_sample(
    out_dir: Path,
    n: int = 1000,
    seed: int = 0,
    *,
    prevalence: tuple[float, float] = (0.2, 0.8),
    test_prevalence: tuple[float, float] | None = None,
    rho: float | None = None,
    marker_prob: tuple[float, float] = (0.0, 1.0),
    marker_pos: str = "top-left",
    marker_size: int = 6,
    sex_used_by_label: bool = False,
    site_token_in_report: bool = False,
    lesion_amp_scale: float = 1.0,
    test_fraction: float = 0.3,
    repeat_fraction: float = 0.15,
    balanced_prevalence: float = 0.5,
    p_report_empty: float = _P_REPORT_EMPTY,
    p_report_uninformative: float = _P_REPORT_UNINFORMATIVE,
    p_report_discordant: float = _P_REPORT_DISCORDANT,
    p_lab_missing: float = _P_LAB_MISSING,
    site_signature: float = 0.0,
    site_coded_lab: str | None = None,
    site_lab_shift: float = 1.5,
    synergy: bool = False,
    image_size: int = IMAGE_SIZE,
) -> pd.DataFrame:
    """Write ``n`` synthetic studies to ``out_dir`` and return the manifest.

    Files: ``images/<id>.png`` and ``masks/<id>.png`` (``image_size`` px square, 8-bit grey),
    ``manifest.csv`` (the returned frame; empty cells for missing report / labs) and
    ``ground_truth.csv`` (per study: marker drawn or not, opacity centre, sigma and
    amplitude, report kind) -- the planted truth, kept out of the manifest so that
    an audit cannot read it as a feature.

    Args:
        out_dir: folder to write into (created).
        n: number of studies.
        seed: all randomness derives from it; same seed, same bytes.
        prevalence: per-site label prevalence ``(A, B)`` in the train split.
        test_prevalence: the same for the test split; ``None`` = as in train.
        rho: if given, overrides both prevalences with :func:`prevalence_for_rho`.
        marker_prob: probability that a site-A / site-B image carries the marker.
        marker_pos: corner of the marker, one of :data:`MARKER_POSITIONS`.
        marker_size: side of the square marker in px.
        sex_used_by_label: if True, prevalence is +0.15 for M and -0.15 for F within
            each site (a benchmark variant; by default sex is independent of label).
        site_token_in_report: if True, every non-empty report ends with a
            site-specific phrase (a text shortcut, for benchmarks).
        lesion_amp_scale: multiplies the opacity contrast (1.0 = default difficulty).
        test_fraction: fraction of patients (per site) in the test split.
        repeat_fraction: fraction of patients with two studies.
        balanced_prevalence: the per-site prevalence of the ``balanced_train`` subset.
        p_report_empty, p_report_uninformative, p_report_discordant: report mix.
        p_lab_missing: per-cell missingness of each lab (MCAR).
        site_signature: strength of an invisible per-site acquisition change on site-B
            images (slight blur, gain and grain; no local marker), for benchmarks.
        site_coded_lab: a lab column (e.g. ``"lactate"``) whose site-B values are
            shifted by ``site_lab_shift`` of its SD: a site-coded tabular shortcut.
        site_lab_shift: the shift of ``site_coded_lab`` in SDs (log scale for lognormals).
        synergy: if True, the label is the XOR of a hidden lab state (a strong ``wbc`` /
            ``crp`` / ``temp`` shift) and the image opacity (also what the report
            describes): neither modality predicts the label alone, both together do.
        image_size: side of the written images and masks in px (geometry scales with it;
            the default keeps the bundled sample's 64x64 bytes).
    """
    if n < 10:
        raise ValueError("n must be at least 10")
    if rho is not None:
        prevalence = prevalence_for_rho(rho)
        test_prevalence = prevalence
    test_prev = prevalence if test_prevalence is None else test_prevalence
    marker_box(marker_pos, marker_size)  # validates
    if site_coded_lab is not None and site_coded_lab not in LAB_COLUMNS:
        raise ValueError(f"site_coded_lab must be one of {LAB_COLUMNS}, got {site_coded_lab!r}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    # patients: ~repeat_fraction of them have two studies; attributes are per patient
    n_patients = int(round(n / (1.0 + repeat_fraction)))
    n_repeat = n - n_patients
    studies_per_patient = np.ones(n_patients, dtype=int)
    studies_per_patient[rng.choice(n_patients, size=n_repeat, replace=False)] = 2
    p_site = rng.permutation(np.array(SITES)[np.arange(n_patients) % 2])
    p_sex = rng.permutation(np.array(["F", "M"])[(np.arange(n_patients) // 2) % 2])
    p_age = np.round(np.clip(rng.normal(58.0, 16.0, n_patients), 20.0, 90.0), 1)
    p_split = np.empty(n_patients, dtype=object)
    for site in SITES:
        members = rng.permutation(np.flatnonzero(p_site == site))
        n_test = int(round(test_fraction * len(members)))
        p_split[members[:n_test]] = "test"
        p_split[members[n_test:]] = "train"

    patient_of = np.repeat(np.arange(n_patients), studies_per_patient)
    site = p_site[patient_of]
    sex = p_sex[patient_of]
    split = p_split[patient_of].astype(str)

    # labels: exact counts per (split, site[, sex]) cell, so the planted prevalence is exact
    label = np.zeros(n, dtype=int)
    for sp, prev in (("train", prevalence), ("test", test_prev)):
        for s_i, s in enumerate(SITES):
            cell = (split == sp) & (site == s)
            if sex_used_by_label:
                for sx, delta in (("F", -0.15), ("M", 0.15)):
                    idx = np.flatnonzero(cell & (sex == sx))
                    _assign_exact(rng, idx, prev[s_i] + delta, label)
            else:
                _assign_exact(rng, np.flatnonzero(cell), prev[s_i], label)
    balanced = _balanced_subset(
        rng, label, site, np.flatnonzero(split == "train"), balanced_prevalence
    )
    marker = rng.random(n) < np.where(site == "A", marker_prob[0], marker_prob[1])

    # what the image and report show, and what shifts the labs: the label, unless synergy
    shown = label
    pos = label.astype(float)
    wbc_shift = _WBC[2]
    if synergy:
        hidden = np.random.default_rng([seed, 2_000_003]).random(n) < 0.5
        shown = label ^ hidden.astype(int)
        pos = hidden.astype(float)
        wbc_shift = 3.0 * _WBC[1]

    # labs
    labs = {
        "wbc": np.round(np.clip(rng.normal(_WBC[0] + wbc_shift * pos, _WBC[1]), 1.5, 30.0), 1),
        "crp": np.round(np.exp(rng.normal(_LOG_CRP[0] + _LOG_CRP[2] * pos, _LOG_CRP[1])), 1),
        "temp": np.round(rng.normal(_TEMP[0] + _TEMP[2] * pos, _TEMP[1]), 1),
        "spo2": np.round(np.clip(rng.normal(_SPO2[0], _SPO2[1], n), 82.0, 100.0), 0),
        "lactate": np.round(np.exp(rng.normal(_LOG_LACTATE[0], _LOG_LACTATE[1], n)), 2),
    }
    if site_coded_lab is not None:
        sd = {"wbc": _WBC[1], "crp": _LOG_CRP[1], "temp": _TEMP[1], "spo2": _SPO2[1]}
        on_b = site == "B"
        if site_coded_lab in ("crp", "lactate"):  # lognormal: shift on the log scale
            factor = np.exp(site_lab_shift * sd.get(site_coded_lab, _LOG_LACTATE[1]))
            labs[site_coded_lab] = np.where(
                on_b, labs[site_coded_lab] * factor, labs[site_coded_lab]
            )
        else:
            labs[site_coded_lab] = labs[site_coded_lab] + on_b * site_lab_shift * sd[site_coded_lab]
    for col in LAB_COLUMNS:
        labs[col] = np.where(rng.random(n) < p_lab_missing, np.nan, labs[col])

    # images, masks, reports
    width = max(4, len(str(n)))
    ids = [f"s{i + 1:0{width}d}" for i in range(n)]
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    report_rng = np.random.default_rng([seed, 1_000_003])
    reports: list[str | None] = []
    truth_rows: list[dict[str, object]] = []
    for i, sid in enumerate(ids):
        spec = StudySpec(
            seed=seed,
            index=i,
            sex=str(sex[i]),
            label=int(shown[i]),
            marker=bool(marker[i]),
            marker_pos=marker_pos,
            marker_size=marker_size,
            lesion_amp_scale=lesion_amp_scale,
            signature=site_signature if site[i] == "B" else 0.0,
        )
        study = render_study(spec, image_size)
        Image.fromarray(study.image, mode="L").save(
            out_dir / "images" / f"{sid}.png", optimize=True
        )
        Image.fromarray(study.mask, mode="L").save(out_dir / "masks" / f"{sid}.png", optimize=True)
        text, kind = _make_report(
            report_rng,
            int(shown[i]),
            str(site[i]),
            study.lesion_row,
            study.lesion_col,
            image_size,
            site_token_in_report,
            p_report_empty,
            p_report_uninformative,
            p_report_discordant,
        )
        reports.append(text)
        truth_rows.append(
            {
                "id": sid,
                "marker": int(marker[i]),
                "lesion_row": study.lesion_row,
                "lesion_col": study.lesion_col,
                "lesion_sigma": study.lesion_sigma,
                "lesion_amp": study.lesion_amp,
                "report_kind": kind,
            }
        )

    df = pd.DataFrame(
        {
            "id": ids,
            "patient_id": [f"p{p + 1:0{width}d}" for p in patient_of],
            "split": split,
            "balanced_train": balanced.astype(int),
            "site": site.astype(str),
            "sex": sex.astype(str),
            "age": p_age[patient_of].astype(float),
            "label": label.astype(int),
            "image_path": [f"images/{s}.png" for s in ids],
            "mask_path": [f"masks/{s}.png" for s in ids],
            "report": pd.Series(reports, dtype="str"),
            **{c: labs[c].astype(float) for c in LAB_COLUMNS},
        },
        columns=list(MANIFEST_COLUMNS),
    )
    df.to_csv(out_dir / "manifest.csv", index=False)
    pd.DataFrame(truth_rows).to_csv(out_dir / "ground_truth.csv", index=False)
    return df


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 500) -> Path:
    """Build a lowercase BERT-style WordPiece tokenizer from ``texts`` and save it to ``out_dir``.

    The vocabulary is built here, not by ``tokenizers``' WordPiece trainer, whose ties
    between equally frequent merges fall in hash order: two trainings on the same
    reports gave different files. Here it is ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids
    0-4), every character seen (alone and as a ``##`` continuation, so no word of the
    corpus becomes ``[UNK]``), then whole words by falling count, ties alphabetical,
    until ``vocab_size``. Same texts, same bytes.

    Why a folder and not a ``vocab.txt``: ``transformers`` 5 may silently map every
    word to ``[UNK]`` when a BERT tokenizer is built from a bare vocab file, so the
    audit always loads the folder with ``AutoTokenizer.from_pretrained(out_dir)``.
    The folder holds ``tokenizer.json``, ``tokenizer_config.json`` (class
    ``BertTokenizerFast``), ``special_tokens_map.json`` and ``vocab.txt``. Loading
    needs no network.

    Raises ``ValueError`` if the saved tokenizer maps the corpus's words to ``[UNK]``.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for text in corpus
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted({c for word in counts for c in word})
    words = sorted(counts, key=lambda w: (-counts[w], w))
    tokens = list(dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars)]))
    have = set(tokens)
    tokens += [w for w in words if w not in have][: max(0, vocab_size - len(tokens))]
    tok = Tokenizer(
        WordPiece(
            {t: i for i, t in enumerate(tokens)}, unk_token="[UNK]", max_input_chars_per_word=100
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)  # kept whole (never split by the pre-tokenizer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if [tok.token_to_id(s) for s in specials] != list(range(len(specials))):
        raise ValueError("special tokens did not get ids 0-4")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    vocab = tok.get_vocab()
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise ValueError("tokenizer vocabulary ids are not contiguous")
    (out_dir / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in ordered), encoding="utf-8")
    special_map = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "BertTokenizerFast",
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": 128,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        **special_map,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )

    # sanity: the saved folder, loaded the way the audit loads it, must not map words to [UNK]
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    sample = " ".join(" ".join(corpus[:50]).split()[:200])
    ids = loaded(sample, add_special_tokens=False)["input_ids"]
    if loaded.pad_token_id != 0 or not ids or ids.count(loaded.unk_token_id) > 0.5 * len(ids):
        raise ValueError(f"saved tokenizer maps most words to [UNK] or [PAD] != 0: {out_dir}")
    return out_dir
