"""What a pass of probing's ``used`` verdict rules out: the smallest detectable erasure effect
(``erasure.mde_dp.<attr>``) against its closed form, the bootstrap it stands in for, and
planted effects run through the rule itself; and the metric and note in a probing run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from conftest import byo_model_config, tiny_config
from test_probing import _run, analytic_context

from mmaudit.checks.probing.effects import erasure_effects
from mmaudit.checks.probing.power import (
    min_detectable_excess,
    patient_se,
    used_power,
)
from mmaudit.checks.probing.records import ErasureRow
from mmaudit.checks.probing.verdicts import used_by_head
from mmaudit.methods.stats import bootstrap_groups
from mmaudit.runner import Overrides, run_audit

Z = NormalDist().inv_cdf


def test_mde_closed_form_and_its_floors() -> None:
    """Significance bound: (z(1 - alpha / m) + z(0.8)) * se, with z(1 - alpha / 2) when m is 1
    (the CI's lower end is the stricter); a floor (``used_min_dp`` or the random draws'
    spread) above the significance bound replaces it, plus z(0.8) * se."""
    se = 0.01
    assert min_detectable_excess(se, alpha=0.05, n_tests=3) == pytest.approx(
        (Z(1 - 0.05 / 3) + Z(0.8)) * se
    )
    assert min_detectable_excess(se, alpha=0.05, n_tests=1) == pytest.approx(
        (Z(0.975) + Z(0.8)) * se
    )
    assert min_detectable_excess(se, alpha=0.05, n_tests=3, min_dp=0.05) == pytest.approx(
        0.05 + Z(0.8) * se
    )
    assert min_detectable_excess(se, alpha=0.05, spread=0.04, min_dp=0.02) == pytest.approx(
        0.04 + Z(0.8) * se
    )
    assert math.isnan(min_detectable_excess(math.nan, alpha=0.05))


def test_mde_shrinks_like_one_over_sqrt_n() -> None:
    """Quadrupling the patients halves the SE and, without a floor, the MDE; the floor
    (``used_min_dp``) then stops it shrinking."""
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.05, 4000)
    mdes = []
    for n in (100, 400, 1600):
        se, n_pat = patient_se(values[:n], None)
        assert n_pat == n
        mdes.append(min_detectable_excess(se, alpha=0.05, n_tests=2))
    assert mdes[0] / mdes[1] == pytest.approx(2, rel=0.1)
    assert mdes[1] / mdes[2] == pytest.approx(2, rel=0.1)
    se, _ = patient_se(values[:1600], None)
    floored = min_detectable_excess(se, alpha=0.05, n_tests=2, min_dp=0.02)
    assert floored == pytest.approx(0.02 + Z(0.8) * se)


def test_patient_se_equals_the_bootstrap_of_whole_patients() -> None:
    """Rows of one patient move together (a shared per-patient effect): the closed form
    matches the SD of the mean over ``stats.bootstrap_groups`` resamples, and is well above
    the SE that treats the rows as independent (the clean counterpart)."""
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(150), 3)
    values = rng.normal(0, 0.05, 150)[patients] + rng.normal(0, 0.01, 450)
    se, n_pat = patient_se(values, patients)
    assert n_pat == 150
    means = [values[i].mean() for i in bootstrap_groups(450, patients, 4000, rng)]
    assert se == pytest.approx(np.std(means), rel=0.06)
    rows_se, _ = patient_se(values, None)
    assert se > 1.5 * rows_se
    one, n_one = patient_se(values, np.zeros(450))
    assert math.isnan(one) and n_one == 1


J = 4


def _simulated_row(n_pat: int, delta: float, seed: int, n_boot: int = 100) -> ErasureRow:
    """A binary model's predictions before and after erasing an attribute and J random
    subspaces, two studies per patient: each patient has a sensitivity s (how far any
    erasure moves its predictions); a random erasure moves a study by s x U(0.8, 1.2), the
    attribute's by s x U(0, 2) + ``delta`` -- the same mean, so ``delta`` is the planted
    excess |Δp|. Effects through the check's own bootstrap (``erasure_effects``), Holm over
    one attribute."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_pat), 2)
    n = patients.size
    y = rng.integers(0, 2, n_pat)[patients]
    s = rng.uniform(0.02, 0.08, n_pat)[patients]
    base = rng.uniform(0.3, 0.7, n)
    sign = rng.choice([-1.0, 1.0], n)
    randoms = [(base + sign * s * rng.uniform(0.8, 1.2, n))[:, None] for _ in range(J)]
    moved = s * rng.uniform(0, 2, n) + delta
    erased = (base + sign * moved)[:, None]
    boot = {"groups": patients, "n_boot": n_boot, "alpha": 0.05, "seed": seed}
    effects = erasure_effects(y, base[:, None], erased, randoms, "binary", **boot)
    draw_dp = np.stack([np.abs(r[:, 0] - base) for r in randoms])
    row = ErasureRow(
        attribute="z",
        rank=1,
        residual=math.nan,
        dp_draws=draw_dp.mean(axis=1),
        excess_rows=moved - draw_dp.mean(axis=0),
        **effects,
    )
    row.p_holm = float(row.excess.null_p)
    return row


def test_planted_effects_at_the_mde_are_detected_four_times_in_five() -> None:
    """The stated MDE at 150 patients (per-patient SD from a 20 000-patient pilot with no
    effect, the check's own estimator) is detected by the ``used`` rule itself in about 80 %
    of seeded repeats, twice it nearly always, 0.3 x it rarely; the MDE each small audit
    states for itself lies near the pilot's."""
    pilot = _simulated_row(20_000, 0.0, seed=0, n_boot=50)
    patients = np.repeat(np.arange(20_000), 2)
    sd = used_power(pilot, patients, 0.05, 1, 1e-4).sd_patient
    mde = min_detectable_excess(sd / math.sqrt(150), alpha=0.05, min_dp=1e-4)
    rates = {}  # 100 repeats at the MDE (binomial SD 0.04), 50 at the others
    for factor, repeats in ((0.3, 50), (1.0, 100), (2.0, 50)):
        hits = [
            used_by_head(_simulated_row(150, factor * mde, seed=100 + k), 0.05, 1e-4)
            for k in range(repeats)
        ]
        rates[factor] = float(np.mean(hits))
    assert 0.66 <= rates[1.0] <= 0.92, rates
    assert rates[2.0] >= 0.96, rates
    assert rates[0.3] <= 0.3, rates
    small = np.repeat(np.arange(150), 2)
    stated = [used_power(_simulated_row(150, 0.0, 7 + k), small, 0.05, 1, 1e-4) for k in range(5)]
    assert np.median([s.mde for s in stated]) == pytest.approx(mde, rel=0.15)


def test_used_power_se_matches_the_rules_bootstrap() -> None:
    """The closed-form SE (patients plus the random draws' spread) is the SE the rule's
    p-value comes from: value / z(1 - p) of the excess, read back from its Estimate."""
    row = _simulated_row(300, 0.004, seed=3, n_boot=2000)
    se_boot = row.excess.value / Z(1 - row.excess.null_p)
    power = used_power(row, np.repeat(np.arange(300), 2), 0.05, 1, 0.02)
    assert power.se == pytest.approx(se_boot, rel=0.1)
    assert power.n_patients == 300
    assert power.bound == "used_min_dp"
    assert power.mde == pytest.approx(0.02 + Z(0.8) * power.se)


def test_too_few_patients_give_nan_and_a_note_that_says_so() -> None:
    """Four patients whose erasures move predictions wildly: no effect an erasure can have
    (at most 1 - the random |Δp|) reaches significance after the floors, so the MDE is NaN;
    the check's note says a pass rules out nothing."""
    from types import SimpleNamespace

    from mmaudit.checks.probing.power import used_power_output
    from mmaudit.methods.stats import Estimate

    e = Estimate(0.0, -0.5, 0.5, 8, 0.5)
    row = ErasureRow(
        attribute="sex",
        rank=1,
        dp=e,
        dp_random=Estimate(0.3),
        excess=e,
        flip=e,
        flip_random=e,
        dauroc=e,
        dauroc_random=e,
        residual=math.nan,
        dp_draws=np.array([0.1, 0.3, 0.5]),
        excess_rows=np.array([0.8, 0.8, -0.8, -0.8, 0.8, 0.8, -0.8, -0.8]),
    )
    params = SimpleNamespace(alpha=0.05, used_min_dp=0.02)
    out = used_power_output([row], np.repeat(np.arange(4), 2), params, {"sex": "not_encoded"})  # type: ignore[arg-type]
    assert math.isnan(out.metrics["erasure.mde_dp.sex"])
    (note,) = out.notes
    assert note.startswith("used: a pass on sex rules out no erasure effect at this n")
    assert "4 patients" in note


# ----------------------------------------------------------------------------- in the check


@pytest.fixture(scope="module")
def analytic_runs() -> dict[str, Any]:
    return {head: _run(analytic_context(head)) for head in ("clean", "shortcut")}


def test_check_states_the_mde_for_every_erased_attribute(analytic_runs: dict[str, Any]) -> None:
    """The analytic heads (295 patients): every erased attribute has ``erasure.mde_dp``; site,
    used by the shortcut head, gets no "a pass means" note there (it failed), but does on
    the clean head, where it is not used; the note's number is the metric's; the erasure
    table carries it. The used site's excess is far above its MDE, the clean one's below."""
    for head, out in analytic_runs.items():
        m = out.metrics
        erased = [k.removeprefix("erasure.rank.") for k in m if k.startswith("erasure.rank.")]
        assert set(erased) >= {"site", "sex"}
        for attr in erased:
            mde = m[f"erasure.mde_dp.{attr}"]
            assert 0.02 <= mde < 0.2, (head, attr, mde)
            notes = [n for n in out.notes if n.startswith(f"used: a pass on {attr} ")]
            if m.get(f"verdict.{attr}") == "encoded_and_used":
                assert notes == []
            else:
                assert len(notes) == 1, out.notes
                assert f"no erasure effect larger than {mde:.3f}" in notes[0]
                # 300 patients, of whom the first six are merged into one (a bad-input case)
                assert "295 patients" in notes[0] and f"/ {len(erased)} attributes" in notes[0]
        table = out.tables["erasure"].set_index("attribute")
        assert table.loc["site", "mde_dp"] == m["erasure.mde_dp.site"]
    shortcut, clean = analytic_runs["shortcut"].metrics, analytic_runs["clean"].metrics
    assert shortcut["erasure.excess_dp.site"].value > 2 * shortcut["erasure.mde_dp.site"]
    assert clean["erasure.excess_dp.site"].value < clean["erasure.mde_dp.site"]


def test_tiny_model_audit_reports_the_mde(
    tiny_manifest: Path, tiny_weights: Path, write_config: Any, tmp_path: Path
) -> None:
    """End to end on the tiny bring-your-own model: report.json has the metric and the note
    for each attribute the erasure tested and did not call used."""
    cfg = tiny_config(
        tiny_manifest,
        byo_model_config(tiny_weights / "tiny.safetensors"),
        data={"attributes": {"sex": {}, "site": {}}},
        checks={"probing": {"params": {"n_boot": 50, "random_baseline": False}}},
    )
    run_audit(write_config(cfg), tmp_path / "r", Overrides(checks=["probing"]))
    probing = json.loads((tmp_path / "r" / "report.json").read_text())["checks"]["probing"]
    metrics = probing["metrics"]
    for attr in ("sex", "site"):
        assert f"erasure.mde_dp.{attr}" in metrics, sorted(metrics)
        if metrics[f"verdict.{attr}"] != "encoded_and_used":
            assert any(n.startswith(f"used: a pass on {attr} ") for n in probing["notes"])
