"""The HTML report in a real browser: headless Chromium (driven by selenium through
chromedriver) renders the hostile report, shows the summary table inside the first screen,
and runs no script from the data. Skipped with the reason when Chromium, chromedriver or
selenium is absent (`make test-browser` installs the browser and driver)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
from test_report import EVIL_ID, build_hostile

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver")
HAS_SELENIUM = importlib.util.find_spec("selenium") is not None
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]

#: under CI=true (.ci/run installs the browser) a missing piece fails instead of skipping
IN_CI = os.environ.get("CI") == "true"
MISSING = (
    "Chromium is not installed (make test-browser)"
    if CHROMIUM is None
    else "chromedriver is not installed (Debian package chromium-driver; make test-browser)"
    if CHROMEDRIVER is None
    else "selenium is not installed (pip install -e '.[dev]')"
    if not HAS_SELENIUM
    else None
)
if IN_CI and MISSING is not None:
    raise RuntimeError(f"CI=true but the browser test cannot run: {MISSING}")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test-browser)"),
    pytest.mark.skipif(
        CHROMEDRIVER is None,
        reason="chromedriver is not installed (Debian package chromium-driver; make test-browser)",
    ),
    pytest.mark.skipif(
        not HAS_SELENIUM, reason="selenium is not installed (pip install -e '.[dev]')"
    ),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hostile report of test_report.py (payloads in a report text, an id, a column)."""
    return build_hostile(tmp_path_factory.getbasetemp() / "hostile_shared")["plain"]


def _chromium(tmp_path: Path, console_log: bool = False):  # type: ignore[no-untyped-def]
    """Headless Chromium through chromedriver, with a fresh profile (and, when asked, the
    page's console messages kept for ``get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture()
def driver(tmp_path: Path):  # type: ignore[no-untyped-def]
    browser = _chromium(tmp_path)
    try:
        yield browser
    finally:
        browser.quit()


def test_summary_table_visible_and_no_script_runs(report: Path, driver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver.get((report / "index.html").as_uri())
    table = driver.find_element(By.ID, "summary")
    width, height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    rect = table.rect
    assert table.is_displayed()
    assert rect["width"] > 0 and rect["height"] > 0
    assert 0 <= rect["x"] < width and 0 <= rect["y"] < height, (rect, width, height)
    cells = [c.text for c in table.find_elements(By.TAG_NAME, "td")]
    assert "performance" in cells and "saliency" in cells
    # the audit ran with --checks: the other checks are visible rows, and the page says so
    not_run = table.find_elements(By.CSS_SELECTOR, "tr.not-run")
    assert [r.find_element(By.TAG_NAME, "td").text for r in not_run] == [
        "ablation",
        "attention",
        "probing",
        "subgroups",
    ]
    assert all(r.is_displayed() and "not run" in r.text for r in not_run)
    narrowed = driver.find_element(By.ID, "narrowed")
    assert narrowed.is_displayed() and "4 of 8 checks ran" in narrowed.text
    assert narrowed.rect["y"] < rect["y"]  # read before the table
    glossary = driver.find_element(By.ID, "glossary")
    assert "EMAP" in glossary.text and "LEACE" in glossary.text
    shot = tmp_path / "shot.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    # nothing from the data became markup or ran
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - the alert(1) payload would open one
    assert driver.title == "mmaudit report"
    assert driver.find_elements(By.TAG_NAME, "script") == []
    assert driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    text = driver.execute_script("return document.body.textContent")
    assert EVIL_ID in text and "secret report" in text  # shown as text (in closed <details>)
    cell_texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('td')).map(c => c.textContent.trim())"
    )
    assert "nan" not in {c.lower() for c in cell_texts}  # missing values are dashes
    # the visibility check can fail: a hidden table is reported as not displayed
    driver.execute_script("document.getElementById('summary').style.display = 'none'")
    assert not table.is_displayed()


@pytest.fixture()
def logging_driver(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The same headless Chromium, keeping the page's console messages."""
    browser = _chromium(tmp_path, console_log=True)
    try:
        yield browser
    finally:
        browser.quit()


def _not_blank(png: Path) -> float:
    """The grey-level standard deviation of a screenshot (0 for a blank one)."""
    import numpy as np
    from PIL import Image

    return float(np.asarray(Image.open(png).convert("L"), dtype=np.float32).std())


def test_real_report_renders_every_section_and_figure(
    audits: dict[str, Path], logging_driver, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A real audit's page (the sample, saliency and performance) in the browser: no console
    error and no blocked request (a CSP violation is a console error), every check has its
    section, every figure the report lists is an image that decoded, and the screenshot of
    the first screen is not blank."""
    import json

    from selenium.webdriver.common.by import By

    folder = audits["shortcut"]
    report = json.loads((folder / "report.json").read_text())
    driver = logging_driver
    driver.get((folder / "index.html").as_uri())
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
    for name, check in report["checks"].items():
        section = driver.find_element(By.ID, f"check-{name}")
        assert name in section.text
        images = section.find_elements(By.CSS_SELECTOR, "figure img")
        assert len(images) == len(check["figures"]), name
        for img in images:
            loaded = driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img
            )
            assert loaded, (name, img.get_attribute("alt"))
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.alt)"
    )
    assert broken == []
    shot = tmp_path / "first_screen.png"
    assert driver.save_screenshot(str(shot))
    assert _not_blank(shot) > 5.0
