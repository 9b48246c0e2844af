"""Cross-check agreement: per attribute, which checks flag it and what the pattern means."""

from __future__ import annotations

from mmaudit.checks.contract import Finding
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
