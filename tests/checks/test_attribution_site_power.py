"""Check ``attribution``: a site test with too few rows reports its claims untested.

The site-within-label test sees a site only through the studies off their label class's
usual site. With site almost collinear with the label (2 such studies per class) a
planted site word and a site-coded lab get no significant p, and the ``site_word`` /
``site_feature`` rules must say "not judged" (exempt, a note, a coverage line with the
cell counts) instead of passing. With 10 per class the same planted cues fail as before,
and a clean model passes, tested. The toy model and data follow ``test_attribution.py``
(additive model, its word and lab contributions known).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_attribution import (
    NEGATIVE,
    POSITIVE,
    SIZE,
    TOKENIZER,
    Additive,
    config_for,
    make_context,
    quick,
)

from mmaudit.checks.attribution.check import AttributionCheck
from mmaudit.checks.attribution.site_power import SiteCells
from mmaudit.checks.findings import count_judged, exemption_notes, judge

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: site almost collinear with the label: 2 studies per class off its main site (rho ~0.9)
TIED = {(0, "A"): 38, (0, "B"): 2, (1, "A"): 2, (1, "B"): 38}
#: the same prevalence gap, loosened: 10 studies per class off its main site
LOOSE = {(0, "A"): 30, (0, "B"): 10, (1, "A"): 10, (1, "B"): 30}
SITE_RULES = ("site_word", "site_feature")


@pytest.fixture(autouse=True)
def _close_figures() -> Any:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def write_cells(
    folder: Path, cells: dict[tuple[int, str], int], lab_shift: float, seed: int = 0
) -> Path:
    """Studies per (label, site) cell as given. Site word: "portable chest radiograph."
    opens 70 % of each site-B cell's reports and 10 % of each site-A cell's (a site cue
    within every label class, not a perfect one). ``lab_b`` is N(0, 1) shifted by
    ``lab_shift`` at site B (0: no site signal); ``lab_a`` follows the label."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:12, 4:12] = 255
    rows = []
    for (label, site), n in cells.items():
        with_word = round((0.7 if site == "B" else 0.1) * n)
        for j in range(n):
            i = len(rows)
            img = rng.normal(90 + 40 * label, 8, (SIZE, SIZE))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                folder / "images" / f"s{i}.png"
            )
            Image.fromarray(mask).save(folder / "masks" / f"s{i}.png")
            report = (POSITIVE if label else NEGATIVE)[j % 3]
            if j < with_word:
                report = "portable chest radiograph. " + report
            rows.append(
                {
                    "id": f"s{i}",
                    "patient": f"p{i}",
                    "site": site,
                    "sex": "F" if i % 3 else "M",
                    "label": label,
                    "image_path": f"images/s{i}.png",
                    "mask_path": f"masks/s{i}.png",
                    "report": report,
                    "lab_a": float(rng.normal(label, 1.0)),
                    "lab_b": float(rng.normal(lab_shift * (site == "B"), 1.0)),
                }
            )
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def vocab() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def run_on(folder: Path, cells: dict, lab_shift: float, word: str, vocab: Any) -> Any:
    """The check on ``cells``, the model keyed on ``word`` (value 2) and on both labs
    (``lab_b`` most: weight 1, ``lab_a`` 0.3)."""
    manifest = write_cells(folder, cells, lab_shift)
    model = Additive(len(vocab), {vocab.convert_tokens_to_ids(word): 2.0}, [0.3, 1.0], [0, 0])
    ctx = make_context(config_for(manifest), model)
    return quick(shares=False, n_examples=0).run(ctx)


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory: pytest.TempPathFactory, vocab: Any) -> Any:
    return run_on(tmp_path_factory.mktemp("tied"), TIED, 1.0, "portable", vocab)


def test_site_tied_to_label_reports_site_claims_untested(tied_run: Any) -> None:
    out = tied_run
    rules = AttributionCheck.default_thresholds
    word, lab = "text.site_word_share.portable", "tabular.site_feature_share.lab_b"
    # the planted cues carry the attribution; the test, on 2 rows per class, cannot see them
    assert out.metrics[word].value > 0.15 and out.metrics[lab].value > 0.5
    site_table = out.tables["word_site_test"].set_index("word")
    assert site_table.loc["portable", "p_adjusted"] > 0.05
    labs = out.tables["tabular_importance"].set_index("feature")
    assert labs.loc["lab_b", "p_adjusted"] > 0.05
    # ... so the metrics carry no p-value: neither rule can judge them (no silent pass)
    site_metrics = [k for k in out.metrics if k.startswith(("text.site_", "tabular.site_"))]
    assert site_metrics and all(out.metrics[k].null_p is None for k in site_metrics)
    assert set(out.exempt_rules) == set(SITE_RULES)
    for rule, one in (("site_word", "report word"), ("site_feature", "lab feature")):
        reason = out.exempt_rules[rule]
        assert reason.startswith(f"Not tested: whether a {one}")
        assert "label 0: A 38, B 2; label 1: A 2, B 38" in reason
        assert "4 studies off their label class's main site" in reason
        assert "min_site_test_rows=10" in reason and "a split where site and label" in reason
    assert not [f for f in judge("attribution", out.metrics, rules) if f.rule in SITE_RULES]
    notes = exemption_notes(
        "attribution", out.exempt_rules, out.metrics, rules, out.exempt_next_steps
    )
    assert {n.rule: n.severity for n in notes} == {"site_word": "note", "site_feature": "note"}
    assert all(n.evidence.endswith("not judged") for n in notes)
    # the next step says how to test the claim, not how to remove a cue that was never found
    assert all(n.next_step.startswith("To test it, audit more studies") for n in notes)
    assert not any("comes from" in n.next_step or "harmonise" in n.next_step for n in notes)
    only_site = {k: r for k, r in rules.items() if k in SITE_RULES}
    assert count_judged(out.metrics, only_site, out.exempt_rules) == 0
    lines = [c for c in out.coverage if c.startswith(SITE_RULES)]
    assert len(lines) == 2
    assert lines[0].startswith("site_word: 10 of 10 report words not tested")
    assert lines[1].startswith("site_feature: 2 of 2 lab features not tested")
    assert all("label 0: A 38, B 2; label 1: A 2, B 38" in c for c in lines)


def test_enough_off_diagonal_rows_fail_the_planted_site_cues(tmp_path: Path, vocab: Any) -> None:
    out = run_on(tmp_path, LOOSE, 1.0, "portable", vocab)
    rules = AttributionCheck.default_thresholds
    assert out.exempt_rules == {}
    assert not [c for c in out.coverage if c.startswith(SITE_RULES)]
    findings = judge("attribution", out.metrics, rules)
    flagged = {f.rule: (f.metric, f.severity) for f in findings if f.rule in SITE_RULES}
    assert flagged == {
        "site_word": ("text.site_word_share.portable", "fail"),
        "site_feature": ("tabular.site_feature_share.lab_b", "fail"),
    }


def test_clean_model_with_enough_rows_is_tested_and_passes(tmp_path: Path, vocab: Any) -> None:
    out = run_on(tmp_path, LOOSE, 0.0, "opacity", vocab)
    rules = AttributionCheck.default_thresholds
    assert out.exempt_rules == {}
    assert not [c for c in out.coverage if c.startswith(SITE_RULES)]
    # lab_b carries most of the lab attribution, with no site signal: tested, cleared
    lab = out.metrics["tabular.site_feature_share.lab_b"]
    assert lab.value > 0.5 and lab.null_p is not None and lab.null_p > 0.05
    word = out.metrics["text.site_word_share.opacity"]
    assert word.value > 0.15 and word.null_p is not None and word.null_p > 0.05
    assert not [f for f in judge("attribution", out.metrics, rules) if f.rule in SITE_RULES]
    only_site = {k: r for k, r in rules.items() if k in SITE_RULES}
    assert count_judged(out.metrics, only_site) == len(
        [k for k in out.metrics if k.startswith(("text.site_", "tabular.site_"))]
    )


def test_a_site_cue_found_on_few_rows_still_fails(tmp_path: Path, vocab: Any) -> None:
    """A permutation p is valid at any size: a word in every site-B report and no site-A
    one is significant on 2 rows per class, and fails; the words not flagged are the
    untested ones, in the coverage line, and the rule is judged, not exempted."""
    manifest = write_cells(tmp_path, TIED, 0.0)
    frame = pd.read_csv(manifest)
    bare = frame["report"].str.removeprefix("portable chest radiograph. ")
    frame["report"] = np.where(frame["site"] == "B", "portable chest radiograph. " + bare, bare)
    frame.to_csv(manifest, index=False)
    model = Additive(len(vocab), {vocab.convert_tokens_to_ids("portable"): 2.0}, [0.3, 1.0], [0, 0])
    ctx = make_context(config_for(manifest), model)
    out = quick(shares=False, n_examples=0, tabular=False).run(ctx)
    est = out.metrics["text.site_word_share.portable"]
    assert est.null_p is not None and est.null_p < 0.05
    assert "site_word" not in out.exempt_rules
    findings = judge("attribution", out.metrics, AttributionCheck.default_thresholds)
    flagged = [(f.metric, f.severity) for f in findings if f.rule == "site_word"]
    assert flagged == [("text.site_word_share.portable", "fail")]
    untested = [
        k for k in out.metrics if k.startswith("text.site_") and out.metrics[k].null_p is None
    ]
    assert untested
    (line,) = [c for c in out.coverage if c.startswith("site_word")]
    assert line.startswith(f"site_word: {len(untested)} of 10 report words not tested")


def test_site_cells_count_studies_off_each_class_main_site() -> None:
    """Per label class, the studies not at its most common site; a class with one site
    adds none; with three sites both smaller ones count; multilabel classes are label
    combinations, as the test's strata are."""
    cells = SiteCells.of(np.array(["A", "A", "B", "B", "B"]), np.array([0, 0, 1, 1, 0]))
    assert cells.off_main == 1
    assert cells.describe() == "label 0: A 2, B 1; label 1: A 0, B 2"
    multi = SiteCells.of(
        np.array(["A", "B", "C", "A", "A"]), np.array([[0, 1], [0, 1], [0, 1], [0, 1], [1, 0]])
    )
    assert multi.off_main == 2
    assert multi.describe() == "label 0|1: A 2, B 1, C 1; label 1|0: A 1, B 0, C 0"
