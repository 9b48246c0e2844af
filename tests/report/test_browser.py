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


def test_verdict_first_and_no_script_from_the_data(report: Path, driver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The hostile report: the verdict and what decides it fill the first screen, the
    summary table lists every check (those not run too), and nothing from the data became
    markup or ran; the only script is the page's own."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    from mmaudit.report.html import page_script

    driver.get((report / "index.html").as_uri())
    width, height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    verdict = driver.find_element(By.CSS_SELECTOR, "#verdict h1")
    assert verdict.is_displayed() and 0 <= verdict.rect["y"] < height
    narrowed = driver.find_element(By.ID, "narrowed")
    assert narrowed.is_displayed() and "4 of 8 checks ran" in narrowed.text
    assert narrowed.rect["y"] < height  # a partial audit says so on the first screen
    toc = driver.find_element(By.ID, "toc")
    assert toc.is_displayed() and "saliency" in toc.text and "performance" in toc.text
    table = driver.find_element(By.ID, "summary")
    assert table.is_displayed() and narrowed.rect["y"] < table.rect["y"]
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
    assert all("not run" in r.text for r in not_run)
    glossary = driver.find_element(By.ID, "glossary")
    assert "EMAP" in glossary.text and "LEACE" in glossary.text
    shot = tmp_path / "shot.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    # nothing from the data became markup or ran
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - the alert(1) payload would open one
    assert driver.title == "mmaudit report"
    scripts = driver.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("textContent") for s in scripts] == [page_script()]
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


def _keep(shot: Path) -> None:
    """Copy a screenshot to ``$MMAUDIT_SCREENSHOTS`` when set, for a person to look at."""
    keep = os.environ.get("MMAUDIT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


#: in each section, whether the first figure comes before every table not inside a closed
#: <details> (an unfolded table); true for a section with no unfolded table at all
_ORDER_JS = """
return Array.from(document.querySelectorAll('section.check')).map(s => {
  const fig = s.querySelector('figure');
  const open = Array.from(s.querySelectorAll('table')).filter(t => {
    for (let d = t.closest('details'); d; d = d.parentElement.closest('details')) {
      if (!d.open) return false;
    }
    return true;
  });
  const ok = open.every(t => fig && (fig.compareDocumentPosition(t) &
    Node.DOCUMENT_POSITION_FOLLOWING));
  return [s.id, ok, open.length];
});
"""


def test_real_report_reads_top_down_and_every_link_lands(
    audits: dict[str, Path], logging_driver, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A real audit's page (the sample, saliency and performance) in the browser: no console
    error and no blocked request (a CSP violation, the page's script refused, is a console
    error); every check has its section, each leading with its key figure before any
    unfolded table; every figure the report lists is an image that decoded; every
    ``<details>`` opens; every link to ``#...`` lands on an element; a link into a folded
    metric table opens it; the filter and sort of a metric table work; and the
    screenshots of the first screen and of the saliency section are not blank."""
    import json

    from selenium.webdriver.common.by import By

    from mmaudit.report.anchors import check_anchor, figure_anchor, metric_anchor

    folder = audits["shortcut"]
    report = json.loads((folder / "report.json").read_text())
    driver = logging_driver
    driver.get((folder / "index.html").as_uri())
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
    timing = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        " return [n.domContentLoadedEventEnd, n.loadEventEnd]"
    )
    size = (folder / "index.html").stat().st_size
    print(f"index.html {size / 1e6:.2f} MB; DOMContentLoaded {timing[0]:.0f} ms,"
          f" load {timing[1]:.0f} ms")  # fmt: skip
    for name, check in report["checks"].items():
        section = driver.find_element(By.ID, check_anchor(name))
        assert name in section.text
        images = section.find_elements(By.CSS_SELECTOR, "figure img")
        assert len(images) == len(check["figures"]), name
        for img in images:
            loaded = driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", img
            )
            assert loaded, (name, img.get_attribute("alt"))
    key = report["checks"]["saliency"]["key_figures"]
    assert key and key[0] in report["checks"]["saliency"]["figures"]
    first = driver.find_element(By.CSS_SELECTOR, f"#{check_anchor('saliency')} figure")
    assert first.get_attribute("id") == figure_anchor("saliency", key[0])
    assert first.is_displayed()
    order = driver.execute_script(_ORDER_JS)
    assert order and all(ok for _, ok, _ in order), order
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.alt)"
    )
    assert broken == []
    shot = tmp_path / "first_screen.png"
    assert driver.save_screenshot(str(shot))
    _keep(shot)
    assert _not_blank(shot) > 5.0
    driver.execute_script(
        "document.getElementById(arguments[0]).scrollIntoView()", check_anchor("saliency")
    )
    shot = tmp_path / "saliency_section.png"
    assert driver.save_screenshot(str(shot))
    _keep(shot)
    assert _not_blank(shot) > 5.0
    # every link to #... lands on one element
    links = driver.execute_script(
        "return Array.from(document.querySelectorAll('a[href^=\"#\"]'))"
        ".map(a => a.getAttribute('href').slice(1))"
    )
    missing = driver.execute_script(
        "return arguments[0].filter(id => !document.getElementById(id))", links
    )
    assert links and missing == []
    # a link into a folded metric table opens it and shows the row
    metric = next(iter(report["checks"]["saliency"]["metrics"]))
    anchor = metric_anchor("saliency", metric)
    driver.execute_script("location.hash = arguments[0]", anchor)
    row = driver.find_element(By.ID, anchor)
    assert row.is_displayed()
    # every <details> opens on a click of its summary and shows what it holds
    details = driver.find_elements(By.TAG_NAME, "details")
    assert len(details) >= 2 * len(report["checks"])
    for d in details:
        if d.get_attribute("open") is None:
            summary = d.find_element(By.TAG_NAME, "summary")
            driver.execute_script("arguments[0].scrollIntoView()", summary)
            summary.click()
        assert d.get_attribute("open") is not None
        body = d.find_elements(By.CSS_SELECTOR, ":scope > :not(summary)")
        assert body and any(b.is_displayed() for b in body), d.text[:80]
    # the metric table filters by name and sorts by a column
    box = driver.find_element(By.CSS_SELECTOR, f"#{check_anchor('saliency')} input.filter")
    rows = f"#{check_anchor('saliency')} details.metrics tbody tr"
    total = len(driver.find_elements(By.CSS_SELECTOR, rows))
    box.send_keys(metric)
    shown = [r for r in driver.find_elements(By.CSS_SELECTOR, rows) if r.is_displayed()]
    assert 0 < len(shown) < total and all(metric in r.text for r in shown)
    box.clear()
    box.send_keys(" ")  # an input event with an empty query shows every row again
    assert all(r.is_displayed() for r in driver.find_elements(By.CSS_SELECTOR, rows))
    header = driver.find_element(By.CSS_SELECTOR, f"#{check_anchor('saliency')} th.sort")
    header.click()
    names = [r.find_element(By.TAG_NAME, "td").text for r in
             driver.find_elements(By.CSS_SELECTOR, rows)]  # fmt: skip
    assert names == sorted(names)
    header.click()
    names = [r.find_element(By.TAG_NAME, "td").text for r in
             driver.find_elements(By.CSS_SELECTOR, rows)]  # fmt: skip
    assert names == sorted(names, reverse=True)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
