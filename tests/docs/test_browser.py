"""Every page of the built site, rendered in headless Chromium at 1280 px: nothing wider than the page,
no table cut off or scrolling, no name in a table broken across lines, no broken image or link.

Chromium and ChromeDriver come from Debian (`chromium`, `chromium-driver`): `.ci/run` installs
them and sets LMLAB_REQUIRE_BROWSER, so CI never skips this; elsewhere it runs when they are
installed. Selenium comes from the dev extra.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WIDTH = 1280
# Another machine's Chromium and fonts lay the same page out a few dozen pixels differently: a table has
# to fit this much narrower than it does here.
SPARE = 48

MEASURE = r"""
const SPARE = arguments[0];
const article = document.querySelector('article') || document.body;
const box = article.getBoundingClientRect();
const out = {page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
             wide: [], tables: [], broken_names: [], images: [], links: []};
const scrolls = el => { for (let p = el; p && p !== article; p = p.parentElement) {
  const s = getComputedStyle(p); if (p.tagName === 'PRE' || s.overflowX === 'auto' || s.overflowX === 'scroll') return true; }
  return false; };
for (const el of article.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width && r.right > box.right + 1 && !scrolls(el)) out.wide.push(el.tagName + ' ' + Math.round(r.right));
}
for (const t of article.querySelectorAll('table')) {  // its narrowest layout, not the one it has here
  const holder = t.closest('.md-typeset__scrollwrap') || t.parentElement;
  const width = t.style.width; t.style.width = 'min-content'; const least = t.scrollWidth; t.style.width = width;
  const before = (t.closest('.md-typeset__scrollwrap') || t).previousElementSibling;  // names which table
  if (least > holder.clientWidth - SPARE)
    out.tables.push(`needs ${least} of ${holder.clientWidth} px: ${before ? before.innerText.slice(0, 60) : ''} / ${t.rows[0] ? t.rows[0].innerText.slice(0, 60) : ''}`);
}
const lines = node => {  // rectangles that do not overlap vertically are on different lines (a <sup> does)
  const r = document.createRange(); r.selectNodeContents(node);
  const rects = [...r.getClientRects()].filter(x => x.width > 0).sort((a, b) => a.top - b.top);
  let count = 0, bottom = -Infinity;
  for (const x of rects) { if (x.top >= bottom - 1) { count += 1; bottom = x.bottom; } else bottom = Math.max(bottom, x.bottom); }
  return count; };
for (const c of article.querySelectorAll('td code, th code'))
  if (lines(c) > 1) out.broken_names.push(c.innerText);
for (const c of article.querySelectorAll('td, th')) {  // one word (an arch string, a number) on two lines
  const text = c.innerText.trim();
  if (text && !/\s/.test(text) && lines(c) > 1) out.broken_names.push(text);
}
for (const i of document.images) if (!i.complete || i.naturalWidth === 0) out.images.push(i.getAttribute('src'));
for (const a of article.querySelectorAll('a[href]')) out.links.push(a.href);
return out;
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        message = "Chromium and ChromeDriver are not installed (Debian packages chromium, chromium-driver)"
        if os.environ.get("LMLAB_REQUIRE_BROWSER"):  # .ci/run installs them and sets this: never skipped there
            pytest.fail(message)
        pytest.skip(message + "; .ci/run installs them")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        f"--window-size={WIDTH},900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if p.name != "404.html")


def test_every_page_fits_1280px_with_no_broken_name_image_or_link(site, served, browser):
    pages = _pages(site)
    assert "index.html" in pages and "reference/config.html" in pages  # page.html links: the site opens from disk
    problems, links = [], set()
    for page in pages:
        browser.get(f"{served}/{page}")
        found = browser.execute_script(MEASURE, SPARE)
        scroll, client = found["page"]
        if scroll > client:
            problems.append(f"{page}: the page scrolls sideways ({scroll} > {client} px)")
        problems += [f"{page}: element past the text column: {w}" for w in found["wide"][:3]]
        problems += [f"{page}: table without {SPARE} px to spare: {t}" for t in found["tables"]]
        problems += [f"{page}: name broken across lines: {n}" for n in found["broken_names"][:5]]
        problems += [f"{page}: broken image {i}" for i in found["images"]]
        links |= {link.split("#")[0] for link in found["links"] if link.startswith(served)}
    for link in sorted(links):
        try:
            urllib.request.urlopen(link, timeout=10).close()
        except urllib.error.HTTPError as exc:
            problems.append(f"broken link {urllib.parse.urlparse(link).path}: {exc.code}")
    assert problems == [], "\n".join(problems)
