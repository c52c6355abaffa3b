"""Headless Chromium for the report tests: render a page to a PNG, and load it with a probe
that records, once the page has loaded, every <img> that did not decode (naturalWidth 0),
every console.error, every script or resource-load error and every resource fetched from
anywhere (a self-contained page fetches none: its images are data: URIs).

The probe is injected into a temporary copy of the page (the report itself has no script);
Chromium prints the DOM after the load event (``--dump-dom``) and the probe's JSON is read
back from it."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PROBE = """<script>
window.__errs = [];
const __ce = console.error;
console.error = function (...a) {
  __errs.push('console.error: ' + a.join(' '));
  __ce.apply(console, a);
};
addEventListener('error', e => {
  const t = e.target;
  __errs.push(t && t.tagName ? 'failed to load ' + t.tagName + ' ' + (t.src || t.href || '')
                             : 'error: ' + e.message);
}, true);
addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {
    errors: __errs,
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    widths: imgs.map(i => i.naturalWidth),
    resources: performance.getEntriesByType('resource').map(r => r.name),
    height: document.documentElement.scrollHeight,
  };
  const d = document.createElement('pre');
  d.id = '__probe';
  d.textContent = JSON.stringify(out);
  document.body.appendChild(d);
});
</script>"""


def chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _run(args: list[str], profile: str) -> subprocess.CompletedProcess[str]:
    exe = chromium()
    assert exe is not None
    base = [exe, "--headless", "--disable-gpu", f"--user-data-dir={profile}"]
    base += ["--no-first-run", "--hide-scrollbars", "--allow-file-access-from-files"]
    if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
        base.append("--no-sandbox")
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)


def probe(page: Path) -> dict[str, Any]:
    """Load ``page`` with the probe; return what it recorded."""
    text = page.read_text()
    with tempfile.TemporaryDirectory(prefix="pathfl-browser-") as tmp:
        probed = page.parent / f".probe-{page.name}"  # same folder: relative links behave alike
        probed.write_text(text.replace("<head>", "<head>" + PROBE, 1))
        try:
            r = _run(["--dump-dom", probed.resolve().as_uri()], tmp)
        finally:
            probed.unlink()
    m = re.search(r'<pre id="__probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no probe output from Chromium (rc {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def screenshot(page: Path, png: Path, *, width: int = 1200, height: int = 2400) -> Path:
    """Render ``page`` to ``png`` (``width`` × ``height`` CSS px)."""
    with tempfile.TemporaryDirectory(prefix="pathfl-browser-") as tmp:
        r = _run(
            [f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri()],
            tmp,
        )
    assert png.is_file(), f"Chromium wrote no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    return png
