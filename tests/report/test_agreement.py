"""Cross-check agreement: per attribute, which checks flag it and what the pattern means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmaudit.checks.contract import Finding
from mmaudit.methods.stats import Estimate
from mmaudit.report.agreement import cross_check
from mmaudit.report.document import CheckReport, Report
from mmaudit.report.markdown import render_markdown

ATTRS = ["site", "sex", "site_b"]


def _check(name: str, findings: list[tuple[str, str, str | None]], **kw: object) -> CheckReport:
    status = kw.pop("status", None) or ("fail" if findings else "pass")
    return CheckReport(
        name=name,
        status=str(status),
        findings=[
            Finding(check=name, rule=r, severity=s, message=f"{r} {m}", metric=m)  # type: ignore[arg-type]
            for r, s, m in findings
        ],
        **kw,  # type: ignore[arg-type]
    )


def _checks(saliency: list[tuple[str, str, str | None]] | None, **extra: CheckReport) -> dict:
    checks = {
        "probing": _check(
            "probing",
            [
                ("used", "fail", "encoded_and_used.site"),
                ("encoded", "warn", "probe_auroc.site.image"),
                ("encoded", "warn", "probe_auroc.site.embedding"),
            ],
        ),
        "embedding": _check(
            "embedding", [("dataset_identity", "warn", "identity_margin.image.site")]
        ),
        "subgroups": _check("subgroups", []),
        "attribution": _check("attribution", [], params={"site_attribute": "site"}),
    }
    if saliency is not None:
        checks["saliency"] = _check("saliency", saliency)
    checks.update(extra)
    return checks


def test_invisible_site_signature_says_saliency_cannot_see_it() -> None:
    ccs = cross_check(_checks(saliency=[("sanity_failed", "warn", "sanity.spearman.ig")]), ATTRS)
    assert [c.attribute for c in ccs] == ["site"]  # sex and site_b: nothing flagged
    site = ccs[0]
    assert site.used == {"probing": ["used: encoded_and_used.site"]}
    assert set(site.encoded) == {"probing", "embedding"}
    assert site.decoded_from == ["image"] and site.image_hotspot is False
    assert site.silent == ["subgroups", "attribution"]
    assert "Saliency finds no image hotspot" in site.message
    assert "global in the image" in site.message


def test_marker_agrees_with_saliency_hotspot() -> None:
    site = cross_check(
        _checks(saliency=[("hotspot_used", "fail", "offroi_hotspot.flip_excess")]), ATTRS
    )[0]
    assert site.image_hotspot is True
    assert "Saliency also finds an image region" in site.message
    assert "no image hotspot" not in site.message


def test_site_word_points_to_attribution_and_needs_the_site_attribute() -> None:
    word = _check(
        "attribution",
        [("site_word", "fail", "text.site_word_share.hospital")],
        params={"site_attribute": "site"},
    )
    site = cross_check(_checks(saliency=[], attribution=word), ATTRS)[0]
    assert "attribution" in site.used and "report word or lab column" in site.message
    # the same rule says nothing about another attribute
    renamed = _check(
        "attribution",
        [("site_word", "fail", "text.site_word_share.hospital")],
        params={"site_attribute": "scanner"},
    )
    site = cross_check(_checks(saliency=[], attribution=renamed), ATTRS)[0]
    assert "attribution" not in site.used


def test_skipped_saliency_and_crashed_checks_do_not_speak() -> None:
    crashed = _check("embedding", [], status="error", reason="ValueError: boom")
    site = cross_check(_checks(saliency=None, embedding=crashed), ATTRS)[0]
    assert site.image_hotspot is None and "aliency" not in site.message
    assert "embedding" not in site.silent and "embedding" not in site.encoded


def test_encoded_only_and_clean() -> None:
    encoded = {"probing": _check("probing", [("encoded", "warn", "probe_auroc.sex.image")])}
    (sex,) = cross_check(encoded, ATTRS)
    assert sex.attribute == "sex" and not sex.used
    assert "no check finds that the predictions depend on it" in sex.message
    assert cross_check({"probing": _check("probing", [])}, ATTRS) == []


def test_summary_markdown_lists_cross_checks() -> None:
    checks = _checks(saliency=[])
    report = Report(
        tool_version="0",
        created="now",
        config={},
        config_path="x.yaml",
        model={},
        data={"n": 10},
        environment={},
        seed=0,
        checks=checks,
        cross_checks=cross_check(checks, ATTRS),
        status="fail",
    )
    md = render_markdown(report)
    assert "**Across checks**" in md and "Saliency finds no image hotspot" in md
    again = Report.model_validate_json(report.model_dump_json())
    assert again.cross_checks == report.cross_checks


def _ablation(share: object) -> CheckReport:
    return CheckReport(name="ablation", status="pass", metrics={"share.image": share})


def test_saliency_on_an_image_the_model_ignores_says_so() -> None:
    """Ablation finds the image's share about 0 (its CI includes 0): saliency's pass means
    the image is not used, and a line says so; an image that is used gives no line."""
    ignored = {"value": 0.004, "ci_low": -0.011, "ci_high": 0.018, "n": 100, "null_p": None}
    checks = _checks(saliency=[], ablation=_ablation(ignored))
    (line,) = [c for c in cross_check(checks, ATTRS) if c.kind == "modality"]
    assert line.attribute == "image" and line.image_hotspot is False
    assert "Saliency judged an image the model does not use" in line.message
    assert "+0.4%, CI -1.1% to +1.8%" in line.message
    assert "saliency's pass means the image is not used" in line.message
    # the per-attribute lines are unchanged by it
    assert [c.attribute for c in cross_check(checks, ATTRS) if c.kind == "attribute"] == ["site"]
    # an Estimate (a report built in memory) reads the same as its JSON dict
    est = Estimate(0.004, ci_low=-0.011, ci_high=0.018, n=100)
    again = cross_check(_checks(saliency=[], ablation=_ablation(est)), ATTRS)
    assert [c.message for c in again if c.kind == "modality"] == [line.message]
    # a flagged saliency finding on that image is put in that light
    flagged = _checks(
        saliency=[("hotspot_used", "fail", "offroi_hotspot.flip_excess")],
        ablation=_ablation(ignored),
    )
    (line,) = [c for c in cross_check(flagged, ATTRS) if c.kind == "modality"]
    assert "findings (hotspot_used) describe maps of an input" in line.message


def test_a_used_image_or_no_ablation_gives_no_image_line() -> None:
    used = {"value": 0.42, "ci_low": 0.31, "ci_high": 0.55}
    small_but_sure = {"value": 0.015, "ci_low": 0.008, "ci_high": 0.02}  # CI excludes 0
    for ablation in (_ablation(used), _ablation(small_but_sure), _ablation(None)):
        ccs = cross_check(_checks(saliency=[], ablation=ablation), ATTRS)
        assert all(c.kind == "attribute" for c in ccs)
    assert all(c.kind == "attribute" for c in cross_check(_checks(saliency=[]), ATTRS))
    # without saliency there is nothing to put in that light
    zero = _ablation({"value": 0.0, "ci_low": -0.01, "ci_high": 0.01})
    none = cross_check(_checks(saliency=None, ablation=zero), ATTRS)
    assert all(c.kind == "attribute" for c in none)


def test_an_audit_of_a_model_that_ignores_the_image_says_so(
    tiny_manifest: Path, tiny_weights: Path, write_config: Any, tmp_path: Path
) -> None:
    """End to end: TinyFusion whose image features reach the fusion layer scaled by 1e-4
    (the maps still have gradients; removing the image moves nothing). Ablation finds the
    image's share about 0 and the "Across checks" section says that saliency judged an
    image the model does not use."""
    import torch
    from conftest import byo_model_config, tiny_config
    from safetensors.torch import load_file, save_file

    from mmaudit.runner import Overrides, run_audit

    state = load_file(tiny_weights / "tiny.safetensors")
    state["fuse.weight"] = state["fuse.weight"].clone()
    state["fuse.weight"][:, :4] *= 1e-4  # the first four fused features come from the image
    save_file(state, tmp_path / "blind.safetensors")
    assert torch.count_nonzero(state["fuse.weight"][:, :4]) > 0
    cfg = tiny_config(
        tiny_manifest,
        byo_model_config(tmp_path / "blind.safetensors"),
        checks={
            "saliency": {
                "params": {"sanity": False, "faithfulness_samples": 0, "n_permutations": 50}
            }
        },
    )
    report = run_audit(
        write_config(cfg), tmp_path / "r", Overrides(checks=["ablation", "saliency"])
    )
    assert report.checks["ablation"].status != "skipped"
    share = report.checks["ablation"].metrics["share.image"]
    assert abs(share["value"]) <= 0.02, share
    lines = [c for c in report.cross_checks if c.kind == "modality"]
    assert [c.attribute for c in lines] == ["image"]
    assert "Saliency judged an image the model does not use" in lines[0].message
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "Saliency judged an image the model does not use" in summary


def _scan_saliency(maps_pointed: int, severity: str = "fail") -> CheckReport:
    return _check(
        "saliency",
        [("scan_used", severity, "scan.max_flip_excess")],
        metrics={
            "scan.max_flip_excess": Estimate(0.4, 0.3, 0.5, 64, 1e-6).to_dict(),
            "scan.maps_pointed": maps_pointed,
            "scan.row": 0.08,
            "scan.col": 0.92,
        },
    )


def test_a_scan_region_no_map_points_at_gets_its_own_line() -> None:
    ccs = cross_check({**_checks(None), "saliency": _scan_saliency(0)}, ATTRS)
    blind = [c for c in ccs if c.kind == "modality" and "scan found" in c.message]
    assert len(blind) == 1 and blind[0].attribute == "image"
    assert "where no trusted map points" in blind[0].message
    assert "8% down, 92% across" in blind[0].message
    # the scan is an image region that changes decisions for the attribute lines too
    site = next(c for c in ccs if c.attribute == "site")
    assert site.image_hotspot is True and "Saliency also finds an image region" in site.message


def test_no_scan_line_when_a_map_points_there_or_the_scan_passes() -> None:
    for saliency in (_scan_saliency(1), _scan_saliency(0, severity="pass")):
        ccs = cross_check({**_checks(None), "saliency": saliency}, ATTRS)
        assert not any("scan found" in c.message for c in ccs)
