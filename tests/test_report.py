"""report.html: escaped, self-contained HTML (pathfl.report), written by a real `pathfl train`
run and checked in a real browser (headless Chromium: every image decoded, no console or
load error, nothing fetched). The browser tests skip, saying why, where Chromium is absent
(`make browser` installs it where it can)."""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path

import pytest
from browser import chromium, probe, screenshot
from PIL import Image
from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.report import markdown
from pathfl.report.html import Page, data_uri, fmt_ci
from pathfl.report.sections import fl_report, round_rows, site_rows
from pathfl.survival.synthetic import make_cohort

NO_BROWSER = "no Chromium on PATH (Debian: apt-get install -y chromium; `make browser`)"
needs_browser = pytest.mark.skipif(chromium() is None, reason=NO_BROWSER)


def _png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def _external_refs(text: str) -> list[str]:
    """src/href values that are not data: URIs or in-page anchors."""
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    return [r for r in refs if not r.startswith(("data:", "#"))]


def test_page_escapes_text_and_embeds_images(tmp_path: Path) -> None:
    png = _png(tmp_path / "a.png")
    page = Page("<b>run</b> & co", subtitle="x")
    page.heading("<script>alert(1)</script>").paragraph('5 < 6 "q"')
    page.table([{"k": "<i>", "v": 0.123456, "n": 3, "nan": float("nan")}])
    page.image(png, caption="<cap>").image(tmp_path / "missing.png")
    out = page.write(tmp_path / "r.html")
    text = out.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;run&lt;/b&gt; &amp; co" in text and "5 &lt; 6 &quot;q&quot;" in text
    assert ">0.123<" in text and ">—<" in text and ">3<" in text
    uri = data_uri(png)
    assert uri in text and base64.b64decode(uri.split(",", 1)[1]) == png.read_bytes()
    assert "missing.png was not written" in text
    assert _external_refs(text) == [] and "<link" not in text and "@import" not in text
    assert fmt_ci(0.6767, (0.52696, 0.83694)) == "0.677 [0.527, 0.837]"
    assert fmt_ci(float("nan"), None) == "—"


def test_markdown_subset(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    _png(tmp_path / "figures" / "km.png")
    md = (
        "## Results <x>\n\nSome **bold** and *em* and `code <y>`\ncontinued.\n\n"
        "| a | b |\n|---|---|\n| 1 | **2** |\n\n![KM](figures/km.png)\n\n"
        "```\npathfl demo --tiny <>\n```\n![gone](figures/none.png)\n"
    )
    html = markdown.to_html(md, base=tmp_path)
    assert "<h2>Results &lt;x&gt;</h2>" in html
    assert "<p>Some <strong>bold</strong> and <em>em</em> and <code>code &lt;y&gt;</code> " in html
    assert "<th>a</th><th>b</th>" in html and "<td><strong>2</strong></td>" in html
    assert data_uri(tmp_path / "figures" / "km.png") in html
    assert "<pre>pathfl demo --tiny &lt;&gt;</pre>" in html
    assert "figures/none.png was not written" in html


def test_fl_tables_give_counts_and_dash_with_reason(tmp_path: Path) -> None:
    rows = site_rows(
        {
            "a": {"val_n_samples": 6.0, "val_n_events": 3.0, "val_n_comparable": 11.0,
                  "val_c_index": 0.8},
            "b": {"val_n_samples": 3.0, "val_n_events": 0.0, "val_n_comparable": 0.0,
                  "val_c_index": 0.0},
        }
    )  # fmt: skip
    assert rows[0]["C-index"] == "0.800" and rows[0]["comparable pairs"] == 11
    assert rows[1]["C-index"].startswith("—") and "no comparable pair" in rows[1]["C-index"]
    r = round_rows(
        [{"round": 1, "seconds": 2.5, "sites": {"a": {"status": "aggregated"}, "b": {}},
          "missing": ["b"], "federated_c_index_prev_global": 0.5}], 2
    )  # fmt: skip
    assert r[0]["sites aggregated"] == "1/2" and r[0]["missing / failed / rejected"] == "b"
    # an (almost) empty run dir still gives a report, saying what is unknown
    (tmp_path / "status.json").write_text('{"state": "failed", "message": "site b <down>"}')
    text = fl_report(tmp_path, audit_rows=[{"log": "audit.jsonl", "chain": "verified"}])
    body = text.read_text()
    assert "failed (site b &lt;down&gt;)" in body and "verified" in body


@pytest.fixture(scope="module")  # a real CLI run: ~10 s CPU, 30-40 s on a loaded machine
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    c = make_cohort(root, n_patients=24, feature_dim=8, tiles=(8, 16), grid_cols=4, seed=3)
    run = root / "run"
    args = ["train", "--features", c.features_dir, "--clinical", c.clinical_csv, "--out", run]
    args += ["--folds", "2", "--epochs", "2", "--min-steps", "8", "--n-boot", "20"]
    args += ["--hidden-dim", "16", "--threads", "1"]
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"report: {run / 'report.html'}" in text
    # progress without a terminal: a few plain lines per fold, and each fold's validation C
    assert re.search(r"fold 1/2: val C \d\.\d{3} \(n 12, \d+ events\)", text), text
    assert "fold 2/2: epoch 8/8 loss" in text and "final (all data): epoch" in text
    return run


@pytest.mark.slow
def test_train_writes_a_self_contained_report(train_run: Path) -> None:
    text = (train_run / "report.html").read_text()
    assert _external_refs(text) == []
    assert text.count("<img ") >= 1 and "data:image/png;base64," in text
    for needle in ("Harrell C [95% CI]", "pooled out-of-fold", "weights SHA-256", "µm/px",
                   "tile px", "Time-dependent AUC", "Log-rank", "synthetic"):  # fmt: skip
        assert needle in text, needle
    assert not list(train_run.parent.glob(".run*"))  # built in the temp dir, moved whole


@pytest.mark.slow
@needs_browser
def test_train_report_renders_in_chromium(train_run: Path, tmp_path: Path) -> None:
    page = train_run / "report.html"
    seen = probe(page)
    assert seen["errors"] == [], seen["errors"]
    assert seen["images"] >= 1 and seen["broken"] == [], seen
    assert all(w > 100 for w in seen["widths"]), seen["widths"]
    assert seen["resources"] == [], "the page fetched files: not self-contained"
    png = screenshot(page, tmp_path / "report.png", height=min(seen["height"], 6000))
    keep = os.environ.get("PATHFL_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(png, keep)
    im = Image.open(png).convert("L")
    assert im.size[0] == 1200
    lo, hi = im.getextrema()
    assert hi - lo > 100  # text and a plot were painted, not a blank page


@needs_browser
def test_probe_catches_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head></head><body><img src="nope.png" alt="gone">'
        '<script>console.error("boom")</script></body></html>'
    )
    seen = probe(page)
    assert seen["broken"] == ["gone"]
    assert any("boom" in e for e in seen["errors"])
    assert any("nope.png" in e for e in seen["errors"])
