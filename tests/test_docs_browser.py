"""The built docs in a real browser: equations are typeset, offline, and no page touches the network.

Opens pages of the HTML build in headless Chromium (Debian packages
``chromium`` and ``chromium-driver``, driven by selenium with the system
chromedriver) and checks, per page:

- every math element was typeset by MathJax (one ``mjx-container`` each, no
  ``mjx-merror``) and no raw ``\\(``/``\\[`` delimiters are left in the text;
- every request the page made (DevTools ``Network.requestWillBeSent`` events
  from chromedriver's performance log) is ``file:``, ``data:`` or ``blob:``
  (or, over HTTP, the same origin);
- the equations come out the same size over ``file://`` and over a local
  HTTP server (offline and "online" rendering are the same).

Slow (it builds the docs unless ``CURVLAB_DOCS_HTML`` names a built tree, as
``make docs-browser`` does). Skips with the reason where chromium, its driver
or selenium are missing. ``CURVLAB_DOCS_SCREENSHOTS=DIR`` saves a PNG of each
page.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
CHROMEDRIVER = shutil.which("chromedriver")
# Flags without which headless Chromium opens connections of its own
# (component updates, sync, field trials, QUIC probes).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1280,1600")
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
MATH_ELEMENT = re.compile(r'<(?:span|div) class="math[ "]')
RAW_TEX = re.compile(r"\\[\[\(]|\\[\]\)]")

# Rendered text without code, minus the accessibility copy MathJax adds.
VISIBLE_TEXT_JS = """
const body = document.body.cloneNode(true);
body.querySelectorAll('pre, code, script, style, mjx-container, mjx-assistive-mml')
    .forEach(e => e.remove());
return body.textContent;
"""
# Waits for MathJax's startup typesetting (or reports why it did not finish).
WAIT_MATHJAX_JS = """
const done = arguments[arguments.length - 1];
const start = Date.now();
(function poll() {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => done('typeset'), e => done('error: ' + e));
    setTimeout(() => done('still typesetting after 30 s'), 30000);
  } else if (Date.now() - start > 20000) {
    done(mj ? 'MathJax did not start' : 'MathJax was not loaded');
  } else {
    setTimeout(poll, 25);
  }
})();
"""
BOXES_JS = """
return Array.from(document.querySelectorAll('mjx-container')).map(e => {
  const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)];
});
"""


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    """The built HTML: ``CURVLAB_DOCS_HTML`` or a fresh ``-W`` build (about a minute)."""
    given = os.environ.get("CURVLAB_DOCS_HTML")
    if given:
        out = Path(given).resolve()
        assert (out / "index.html").is_file(), f"CURVLAB_DOCS_HTML={given} holds no built docs"
        return out
    out = tmp_path_factory.mktemp("html")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="curvlab-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # An explicit driver path: selenium does not run Selenium Manager (no download).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def http_root(html_dir):
    """The same tree served on 127.0.0.1 (an "online" reader)."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def open_page(driver, url: str) -> dict:
    """Load ``url``, wait for MathJax, and return what the page showed and requested."""
    driver.get("about:blank")
    driver.get_log("performance")  # drop the events of earlier pages
    driver.get(url)
    has_mathjax = driver.execute_script("return !!document.querySelector('script[src*=\"mathjax\"]')")
    status = driver.execute_async_script(WAIT_MATHJAX_JS) if has_mathjax else "no MathJax on page"
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    shots = os.environ.get("CURVLAB_DOCS_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        name = urlparse(url).path.strip("/").replace("/", "_") or "index.html"
        driver.save_screenshot(str(Path(shots) / f"{urlparse(url).scheme}_{name}.png"))
    return {
        "status": status,
        "containers": len(driver.find_elements("css selector", "mjx-container")),
        "errors": len(driver.find_elements("css selector", "mjx-merror")),
        "text": driver.execute_script(VISIBLE_TEXT_JS),
        "boxes": driver.execute_script(BOXES_JS),
        "requests": requests,
    }


def foreign(requests: list[str], origin: str | None = None) -> list[str]:
    """Requests that would leave the machine: neither local schemes nor ``origin``."""
    out = []
    for url in requests:
        parsed = urlparse(url)
        if parsed.scheme in LOCAL_SCHEMES:
            continue
        if origin and f"{parsed.scheme}://{parsed.netloc}" == origin:
            continue
        out.append(url)
    return out


def math_pages(html_dir: Path) -> list[str]:
    """The pages checked: the K-FAC maths page, the API index and every API page with maths."""
    api = sorted(p.relative_to(html_dir).as_posix() for p in (html_dir / "api").rglob("*.html")
                 if MATH_ELEMENT.search(p.read_text()))
    extra = [p for p in ("results.html", "choosing.html") if (html_dir / p).is_file()]
    return ["backends/kfac.html", "api/index.html", *extra, *api]


def test_foreign_requests_are_recognised():
    assert foreign(["file:///x.html", "data:image/png;base64,AA", "blob:null/1-2"]) == []
    assert foreign(["https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"]) != []
    assert foreign(["http://127.0.0.1:8000/a.js"], origin="http://127.0.0.1:8000") == []
    assert foreign(["http://127.0.0.1:9/a.js"], origin="http://127.0.0.1:8000") != []


@pytest.mark.slow
def test_pages_typeset_their_equations_offline_without_network_requests(html_dir, browser):
    pages = math_pages(html_dir)
    assert len(pages) > 3, pages
    problems = []
    for page in pages:
        source = (html_dir / page).read_text()
        assert "cdn.jsdelivr" not in source and "mathjax@" not in source, f"{page} names a CDN"
        expected = len(MATH_ELEMENT.findall(source))
        seen = open_page(browser, (html_dir / page).as_uri())
        leaks = foreign(seen["requests"])
        if leaks:
            problems.append(f"{page}: network requests {leaks}")
        if expected:
            if seen["status"] != "typeset":
                problems.append(f"{page}: MathJax {seen['status']}")
            if seen["containers"] < expected:
                problems.append(f"{page}: {seen['containers']} of {expected} equations typeset")
            if seen["errors"]:
                problems.append(f"{page}: {seen['errors']} TeX error(s) (mjx-merror)")
        raw = RAW_TEX.findall(seen["text"])
        if raw:
            problems.append(f"{page}: raw TeX delimiters left in the text: {raw[:5]}")
        if page == "backends/kfac.html" and seen["containers"] < 10:
            problems.append(f"{page}: only {seen['containers']} equations rendered")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_equations_render_the_same_over_http_and_from_disk(html_dir, browser, http_root):
    page = "backends/kfac.html"
    offline = open_page(browser, (html_dir / page).as_uri())
    online = open_page(browser, f"{http_root}/{page}")
    assert online["status"] == offline["status"] == "typeset"
    assert foreign(online["requests"], origin=http_root) == []
    assert online["boxes"] and online["boxes"] == offline["boxes"]
