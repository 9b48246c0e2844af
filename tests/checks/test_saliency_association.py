"""Saliency's content gate on the use rules (``hotspot_used``, ``scan_used``): a model that
relies on an off-ROI structure which looks the same in every study (the spine on an
abdominal slice: in-filling it is a huge change no random control matches) must not fail,
a note says it relies on the box but that nothing in it differs by label or attribute;
the same structure drawn on one site's films only (site independent of the label) must
still fail, naming the site. The association test itself is checked on known answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_saliency_scan import PARAMS
from torch import nn

from mmaudit.checks.contract import AuditContext, CheckOutput, Finding, ThresholdRule
from mmaudit.checks.findings import exemption_notes, judge
from mmaudit.checks.registry import load_builtin_checks
from mmaudit.checks.saliency.content import (
    association_metrics,
    association_tests,
    judge_association,
)
from mmaudit.checks.saliency.hotspot_verdict import judged_box
from mmaudit.methods.stats import Estimate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).resolve().parent
S = 64
N = 64
ROI = (10, 42, 10, 54)  # the organ (ROI mask): rows 10-41, cols 10-53
CENTRE = (54.0, 32.0)  # the spine-like disc below it, radius 4.5: rows 50-58, cols 28-36
BRIGHT = 240


def _disc() -> np.ndarray:
    rr, cc = np.mgrid[0:S, 0:S]
    return (rr - CENTRE[0]) ** 2 + (cc - CENTRE[1]) ** 2 <= 4.5**2


def _roi() -> np.ndarray:
    m = np.zeros((S, S), bool)
    r0, r1, c0, c1 = ROI
    m[r0:r1, c0:c1] = True
    return m


class StructureReader(nn.Module):
    """logit = 8 * (mean of the organ centre - 0.51) + 6 * (mean of the disc - ref).

    ``every``: the disc is on every film (ref = its brightness, so the term is 0 on every
    film and the organ alone decides), but in-filling it drops the logit by about 4.4 and
    turns every positive negative: the model relies on it. ``site``: the disc is on site
    B's films only (ref halfway between disc and background): it pushes every B film
    positive, and in-filling it flips them."""

    def __init__(self, mode: str = "every") -> None:
        super().__init__()
        organ = torch.zeros(S, S)
        organ[16:36, 16:48] = 1.0
        disc = torch.from_numpy(_disc()).float()
        ref = BRIGHT / 255 if mode == "every" else (BRIGHT / 255 + 50 / 255) / 2
        self.organ = nn.Parameter(8.0 * organ / organ.sum())
        self.disc = nn.Parameter(6.0 * disc / disc.sum())
        self.bias = nn.Parameter(torch.tensor(-8.0 * 0.51 - 6.0 * ref))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image[:, 0]
        z = (x * self.organ).sum(dim=(1, 2)) + (x * self.disc).sum(dim=(1, 2)) + self.bias
        return z[:, None]


def build_structure_reader(mode: str = "every") -> nn.Module:
    """The factory the configs name as ``test_saliency_association:build_structure_reader``."""
    return StructureReader(mode).eval()


def write_films(folder: Path, mode: str) -> Path:
    """N films: noisy background, an organ (the ROI) whose brightness carries the label, a
    bright disc below it on every film (``every``) or on site B's only (``site``); site
    alternates and is independent of the label, age is random."""
    rng = np.random.default_rng(1)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    site = np.array(["A", "B"] * (N // 2))
    label = rng.permutation(np.arange(N) % 2)
    age = rng.uniform(20, 90, N).round()
    organ, disc = _roi(), _disc()
    rows = []
    for i in range(N):
        img = rng.normal(50, 6, (S, S))
        img[organ] = rng.normal(100 + 60 * label[i], 8, int(organ.sum()))
        if mode == "every" or site[i] == "B":
            img[disc] = BRIGHT
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"f{i}.png")
        Image.fromarray(organ.astype(np.uint8) * 255).save(folder / "masks" / f"f{i}.png")
        rows.append(
            {
                "id": f"f{i}",
                "patient": f"p{i}",
                "image_path": f"images/f{i}.png",
                "mask_path": f"masks/f{i}.png",
                "label": int(label[i]),
                "site": site[i],
                "age": float(age[i]),
            }
        )
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def context(manifest: Path, mode: str) -> AuditContext:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    cfg = AuditConfig.model_validate(
        {
            "model": {
                "factory": "test_saliency_association:build_structure_reader",
                "kwargs": {"mode": mode},
                "python_path": [str(TESTS)],
                "layers": {},
            },
            "data": {
                "manifest": str(manifest),
                "id": "id",
                "patient": "patient",
                "target": {"column": "label"},
                "image": {
                    "column": "image_path",
                    "size": S,
                    "channels": 1,
                    "mean": [0.0],
                    "std": [1.0],
                    "roi_mask": "mask_path",
                },
                "attributes": {"site": {}, "age": {"kind": "continuous"}},
            },
            "runtime": {"device": "cpu", "batch_size": 32, "progress": False},
        }
    )
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


def run(manifest: Path, mode: str, **params: Any) -> tuple[CheckOutput, list[Finding]]:
    """The check's output and every finding the runner would report: the check's own, the
    rules' (exempted rules left out) and the exemption notes."""
    cls = load_builtin_checks()["saliency"]
    check = cls(cls.Params.model_validate({**PARAMS, **params}))
    out = check.run(context(manifest, mode))
    import matplotlib.pyplot as plt

    for fig in out.figures.values():
        plt.close(fig)
    rules = cls.default_thresholds
    findings = list(out.findings) + judge("saliency", out.metrics, rules, out.exempt_rules)
    findings += exemption_notes(
        "saliency", out.exempt_rules, out.metrics, rules, out.exempt_next_steps
    )
    return out, findings


def _severities(findings: list[Finding], rule: str) -> set[str]:
    return {f.severity for f in findings if f.rule == rule}


def _holds_disc(m: dict[str, Any]) -> bool:
    rows, cols = m["scan.box_rows"], m["scan.box_cols"]
    r0 = round(m["scan.row"] * S - rows / 2)
    c0 = round(m["scan.col"] * S - cols / 2)
    return r0 <= 52 <= r0 + rows and c0 <= 30 <= c0 + cols  # the disc's core


@pytest.fixture(scope="module")
def every(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_films(tmp_path_factory.mktemp("structure_every"), "every")


@pytest.fixture(scope="module")
def site_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_films(tmp_path_factory.mktemp("structure_site"), "site")


def test_a_used_structure_alike_in_every_film_is_a_note_not_a_fail(every: Path) -> None:
    out, findings = run(every, "every")
    m = out.metrics
    # the model does rely on the disc: both use tests flag it on the flips alone
    for key in ("scan.max_flip_excess", "offroi_hotspot.flip_excess"):
        est = m[key]
        assert isinstance(est, Estimate) and est.value > 0.2, key
        assert est.null_p is not None and est.null_p < 0.01, key
    assert _holds_disc(m)
    # ... but nothing in the box differs by label, site or age: no fail, no warn
    for rule in ("scan_used", "hotspot_used"):
        assert _severities(findings, rule) == {"note"}, rule
        assert rule in out.exempt_rules
    note = next(f for f in findings if f.rule == "scan_used")
    assert "relies on the box at rows" in note.message
    assert "does not differ by label, site or age" in note.message
    assert "Holm p" in note.message and ("AUROC" in note.message or "rho" in note.message)
    # what to do is look, not in-paint and retrain (the rule's advice for a shortcut)
    assert note.next_step.startswith("Look at the box") and "retrain" not in note.next_step
    # and the coverage (terminal, summary.md) says it was not judged, where notes are counted
    assert any(c.startswith("scan_used: the model relies on") for c in out.coverage)
    assert "not judged" in note.evidence and "scan max flip excess" in note.evidence
    assert not any(f.severity in ("warn", "fail") for f in findings if "used" in f.rule)
    for prefix in ("scan", "offroi_hotspot"):
        assert m[f"{prefix}.content_associated"] == 0
        assert m[f"{prefix}.content_assoc_with"] in ("label", "site", "age")
        effect = m[f"{prefix}.content_assoc_effect"]
        gap = abs(effect) if m[f"{prefix}.content_assoc_with"] == "age" else abs(effect - 0.5)
        assert m[f"{prefix}.content_assoc_p"] > 0.05 or gap < 0.1, prefix
    # the IG maps point at the disc: the report says so, and no scan_unmapped warning
    assert m["scan.maps_pointed"] == 1
    assert "hotspot box points there" in note.message
    assert not any(f.rule == "scan_unmapped" for f in findings)
    grid = out.tables["scan_grid"]
    tested = grid[grid["content_associated"].notna()]
    assert len(tested) >= 1 and not tested["content_associated"].astype(bool).any()


def test_without_the_gate_the_same_structure_fails_as_before(every: Path) -> None:
    out, findings = run(every, "every", content_gate=False)
    assert "fail" in _severities(findings, "scan_used")
    assert "fail" in _severities(findings, "hotspot_used")
    assert not out.exempt_rules
    assert "scan.content_associated" not in out.metrics
    fail = next(f for f in findings if f.rule == "scan_used")
    assert "was not tested (params.content_gate: false)" in fail.evidence


def test_the_same_structure_on_one_site_only_still_fails(site_only: Path) -> None:
    out, findings = run(site_only, "site")
    m = out.metrics
    assert _holds_disc(m)
    for rule, prefix in (("scan_used", "scan"), ("hotspot_used", "offroi_hotspot")):
        assert _severities(findings, rule) == {"fail"}, rule
        assert rule not in out.exempt_rules
        assert m[f"{prefix}.content_associated"] == 1
        assert m[f"{prefix}.content_assoc_with"] == "site"
        assert m[f"{prefix}.content_assoc_effect"] > 0.95  # B's box is brighter than A's
        assert m[f"{prefix}.content_assoc_p"] < 1e-6
    fail = next(f for f in findings if f.rule == "scan_used")
    assert "the box's content differs by site (AUROC 1.00 for B vs A" in fail.evidence


# ------------------------------------------------------------------ the association test


def _judge(values: dict[str, np.ndarray], targets: dict[str, tuple[str, np.ndarray]]) -> Any:
    tests = association_tests(values, targets)
    return judge_association([tests], 0.05, 0.1, 0.1, list(targets), len(values["mean"]))[0]


def test_the_association_test_knows_associated_from_not() -> None:
    rng = np.random.default_rng(0)
    n = 400
    site = np.array(["north", "south"] * (n // 2), dtype=object)
    sex = rng.choice(np.array(["F", "M"], dtype=object), n)
    label = rng.integers(0, 2, n).astype(object)
    age = rng.uniform(20, 90, n)
    targets = {
        "label": ("categorical", label),
        "site": ("categorical", site),
        "sex": ("categorical", sex),
        "age": ("continuous", age),
    }
    noise = rng.normal(0, 1, n)
    # the same structure in every study: nothing to find
    alike = _judge({"mean": 200 + noise, "std": 5 + 0.1 * rng.normal(0, 1, n)}, targets)
    assert alike.associated is False and alike.family == 8
    assert "does not differ by label, site, sex or age" in alike.words()
    # a marker on one site: site, with AUROC 1 for south
    marked = _judge({"mean": noise + 10 * (site == "south"), "std": 1 + 0 * noise}, targets)
    assert marked.associated is True
    lead = marked.lead
    assert (lead.target, lead.level, lead.other, lead.measure) == (
        "site",
        "south",
        "north",
        "AUROC",
    )
    assert lead.effect == pytest.approx(1.0) and lead.p_holm < 1e-10
    assert marked.words().startswith("differs by site (AUROC 1.00 for south vs north, box mean")
    # a dark one: AUROC near 0 counts just as much
    dark = _judge({"mean": noise - 10 * (site == "south"), "std": noise}, targets)
    assert dark.associated is True and dark.lead.effect == pytest.approx(0.0)
    # content that grows with age: Spearman
    aged = _judge({"mean": noise + 0.1 * age, "std": noise}, targets)
    assert aged.associated is True and aged.lead.target == "age" and aged.lead.effect > 0.5
    met = association_metrics("scan", aged)
    assert met["scan.content_associated"] == 1 and met["scan.content_assoc_with"] == "age"
    assert met["scan.content_assoc_tests"] == 8


def test_a_significant_but_tiny_difference_is_below_the_floor() -> None:
    """At 20 000 studies an AUROC of about 0.53 is far below p = 0.05 but is no shortcut
    (an anatomical edge a pixel lower in one sex): the effect floor keeps it out."""
    rng = np.random.default_rng(1)
    n = 20000
    sex = np.array(["F", "M"] * (n // 2), dtype=object)
    v = rng.normal(0, 1, n) + 0.1 * (sex == "M")
    res = _judge({"mean": v, "std": rng.normal(0, 1, n)}, {"sex": ("categorical", sex)})
    assert res.lead.target == "sex" and res.lead.p_holm < 1e-6
    assert 0.5 < res.lead.effect < 0.56
    assert res.associated is False
    # a floor of 0 lets it through: the floor, not the p-value, decides here
    tests = association_tests({"mean": v}, {"sex": ("categorical", sex)})
    assert judge_association([tests], 0.05, 0.0, 0.0)[0].associated is True


def test_holm_runs_over_every_box_and_degenerate_inputs_do_not_crash() -> None:
    rng = np.random.default_rng(2)
    n = 60
    site = np.array(["A", "B", "C"] * (n // 3), dtype=object)
    targets = {"site": ("categorical", site), "age": ("continuous", rng.uniform(20, 90, n))}
    constant = {"mean": np.full(n, 3.0), "std": np.zeros(n)}
    three = {"mean": rng.normal(0, 1, n) + 5 * (site == "C"), "std": rng.normal(0, 1, n)}
    per_box = [association_tests(v, targets) for v in (constant, three)]
    flat, assoc = judge_association(per_box, 0.05, 0.1, 0.1, list(targets), n)
    assert flat.associated is False and flat.lead.p_holm == 1.0
    assert assoc.associated is True and assoc.lead.level == "C" and assoc.lead.other is None
    assert "C vs the rest" in assoc.words()
    raw = [t.p for t in per_box[1] if t.target == "site" and t.statistic == "mean"][0]
    assert assoc.lead.p_holm == pytest.approx(min(1.0, raw * 8))  # 8 tests, the smallest
    # one level only, or no target: nothing can be tested
    none = judge_association(
        [association_tests(three, {"site": ("categorical", np.array(["A"] * n, dtype=object))})],
        0.05,
        0.1,
        0.1,
    )[0]
    assert none.associated is None and "could not be tested" in none.words()
    assert association_metrics("scan", none) == {"scan.content_assoc_words": none.words()}


def test_the_hotspot_judged_is_a_shortcut_before_anatomy() -> None:
    """Two boxes flagged: the spine with the larger excess, a marker with a smaller one. The
    rule judges the marker (content associated) rather than the spine."""
    rule = ThresholdRule(metric="offroi_hotspot.flip_excess", fail_above=0.05, max_p=0.05)
    metrics = {
        "occlusion.flip_excess.ig": Estimate(0.20, 0.1, 0.3, 100, 0.001),
        "occlusion.flip_excess.ig_2": Estimate(0.08, 0.06, 0.1, 100, 0.01),
        "hotspot.enrichment.ig": Estimate(5.0),
        "hotspot.enrichment.ig_2": Estimate(2.0),
    }
    names = ["ig", "ig_2"]
    assert judged_box(metrics, names, rule) == "ig"
    assert judged_box(metrics, names, rule, {"ig": False, "ig_2": True}) == "ig_2"
    assert judged_box(metrics, names, rule, {"ig": False, "ig_2": None}) == "ig_2"
    assert judged_box(metrics, names, rule, {"ig": False, "ig_2": False}) == "ig"
