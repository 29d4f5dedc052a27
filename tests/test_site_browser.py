"""The committed web site (leaderboard/site/) in a real browser: headless Chromium from the system's packages,
driven by Selenium, the site served on 127.0.0.1.

Needs Debian's chromium and chromium-driver (.ci/run installs them); where they are absent the tests skip
and say why, except under IMPELLER_BENCH_REQUIRE_BROWSER=1 (CI), where they fail.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from impeller_bench.leaderboard import board as leaderboard

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "leaderboard" / "site"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
REQUIRE = os.environ.get("IMPELLER_BENCH_REQUIRE_BROWSER") == "1"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


MISSING = _missing()
if MISSING and REQUIRE:
    raise RuntimeError(f"IMPELLER_BENCH_REQUIRE_BROWSER=1 but {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 900)
    yield driver
    driver.quit()


def _pages() -> list[str]:
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html"))


def _open(browser, url: str) -> dict:
    """Load ``url``; return its console messages and failed requests (both drained)."""
    browser.get_log("browser")
    browser.get_log("performance")
    browser.get(url)
    browser.execute_script("return document.readyState")
    console = [m for m in browser.get_log("browser") if m["level"] in ("SEVERE", "WARNING")]
    failed = []
    for record in browser.get_log("performance"):
        message = json.loads(record["message"])["message"]
        if message["method"] == "Network.loadingFailed":
            failed.append(message["params"].get("errorText"))
        elif message["method"] == "Network.responseReceived" and message["params"]["response"]["status"] >= 400:
            failed.append(f"{message['params']['response']['status']} {message['params']['response']['url']}")
    return {"console": console, "failed": failed}


def test_every_page_loads_clean_and_every_link_and_image_resolves_inside_the_site(browser, site_url):
    pages = _pages()
    assert "index.html" in pages and any(p.startswith("entries/") for p in pages) and any(p.startswith("tracks/") for p in pages)
    for page in pages:
        seen = _open(browser, urljoin(site_url, page))
        assert seen["console"] == [] and seen["failed"] == [], (page, seen)
        for kind, attribute in (("a", "href"), ("img", "src"), ("link", "href"), ("script", "src")):
            for element in browser.find_elements("tag name", kind):
                target = element.get_attribute(attribute)
                if not target or target.startswith("data:"):
                    continue
                parsed = urlparse(target)
                assert target.startswith(site_url), (page, target)  # nothing outside the site
                local = SITE / unquote(parsed.path.lstrip("/"))
                assert local.is_file(), (page, target)
                if parsed.fragment and local.suffix == ".html":
                    assert f'id="{parsed.fragment}"' in local.read_text(), (page, target)
        for image in browser.find_elements("tag name", "img"):
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image), \
                (page, image.get_attribute("src"))


def _rows(table) -> list[str]:
    return [row.get_attribute("data-entry") for row in table.find_elements("css selector", "tbody tr")]


def test_sorting_a_table_by_a_column_reorders_its_rows_as_the_data_says(browser, site_url):
    entries = leaderboard.load_entries(REPO / "leaderboard")
    main_split = next(iter(leaderboard.by_split(entries)))
    claims = {e["name"]: e["metrics"] for e in entries if e["dataset"]["split"] == main_split}
    _open(browser, site_url + "index.html")
    image_table, pixel_table = browser.find_element("id", main_split).find_elements("css selector", "table.board")
    for table, metric in ((pixel_table, "pixel_pro_30"), (image_table, "image_f1_max"), (image_table, "image_auprc")):
        heading = table.find_element("css selector", f'th[data-metric="{metric}"]')
        heading.click()  # highest first
        values = [claims[name][metric] for name in _rows(table)]
        assert sorted(claims) == sorted(_rows(table)) and values == sorted(values, reverse=True), metric
        heading.click()  # again: the other way
        assert [claims[name][metric] for name in _rows(table)] == sorted(values), metric


def test_an_entry_page_shows_its_submissions_figures(browser, site_url):
    for entry in leaderboard.load_entries(REPO / "leaderboard"):
        _open(browser, f"{site_url}entries/{entry['name']}/index.html")
        for row in browser.find_elements("css selector", "#metrics tbody tr"):
            metric = row.get_attribute("data-metric")
            value, (low, high) = entry["metrics"][metric], entry["ci95"][metric]
            assert row.find_element("css selector", ".value").text == f"{100 * value:.2f}", (entry["name"], metric)
            assert row.find_element("css selector", ".interval").text == f"{100 * low:.2f} to {100 * high:.2f}"
        shown = {row.get_attribute("data-metric") for row in browser.find_elements("css selector", "#metrics tbody tr")}
        assert shown == {m for m, v in entry["metrics"].items() if v is not None}, entry["name"]


@pytest.mark.parametrize("width", [1280, 400])
def test_the_index_fits_the_screen_at_desktop_and_phone_width(browser, site_url, width, tmp_path):
    browser.set_window_size(width, 900)
    try:
        _open(browser, site_url + "index.html")
        inner = browser.execute_script("return window.innerWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= inner
        for table in browser.find_elements("css selector", "main table"):
            box = browser.execute_script("var r = arguments[0].parentElement.getBoundingClientRect(); return r.right", table)
            assert box <= inner + 0.5  # a wide table scrolls inside its box, the page does not
        shot = Path(os.environ.get("IMPELLER_BENCH_SCREENSHOTS", tmp_path)) / f"index-{width}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        browser.set_window_size(1280, 900)
