"""Building blocks of a self-contained HTML report: one file, readable offline.

Every text is escaped; images are embedded as base64 ``data:`` URIs; the style sheet is
inline; there is no script, no external CSS, font or image. A :class:`Page` collects blocks
and writes them atomically (temporary file, then rename)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pathfl.io import write_text_atomic

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0 auto;max-width:1100px;padding:1em 2em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ccc;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.nw{white-space:nowrap}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
code{font-size:.9em}
.meta{color:#555;font-size:.9em}
.warn{color:#8a4b00}
details summary{cursor:pointer}
"""


def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(path: str | os.PathLike[str]) -> str:
    """The file at ``path`` as a ``data:`` URI (type from the file name; PNG by default)."""
    mime = mimetypes.guess_type(str(path))[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _cell(value: Any) -> str:
    if value is None:
        return "<td>—</td>"
    if isinstance(value, float):
        return f'<td class="num">{esc(_number(value))}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    text = esc(value)
    return f'<td class="nw">{text}</td>' if len(str(value)) <= 24 else f"<td>{text}</td>"


def _number(x: float, nd: int = 3) -> str:
    return "—" if x != x or x in (float("inf"), float("-inf")) else f"{x:.{nd}f}"


class Page:
    """An HTML report under construction: ``add_*`` appends a block; :meth:`write` saves it."""

    def __init__(self, title: str, *, subtitle: str = "") -> None:
        self.title = title
        self.blocks: list[str] = []
        stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        self.subtitle = f"{subtitle} · {stamp}" if subtitle else stamp

    def heading(self, text: str, *, level: int = 2) -> Page:
        """A section heading (``<h2>`` by default)."""
        self.blocks.append(f"<h{level}>{esc(text)}</h{level}>")
        return self

    def paragraph(self, text: str, *, cls: str = "") -> Page:
        """A paragraph of plain (escaped) text."""
        attr = f' class="{esc(cls)}"' if cls else ""
        self.blocks.append(f"<p{attr}>{esc(text)}</p>")
        return self

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        columns: Sequence[str] | None = None,
        caption: str = "",
    ) -> Page:
        """A table of ``rows`` (columns: ``columns`` or every key in first-seen order);
        floats are shown with 3 decimals, non-finite ones as an em dash."""
        if not rows:
            self.paragraph("(nothing to show)", cls="meta")
            return self
        cols = list(columns or dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in cols) + "</tr>" for r in rows)
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        self.blocks.append(
            f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
        return self

    def key_values(self, items: Mapping[str, Any]) -> Page:
        """A two-column table: key, value (lists joined by commas)."""
        rows = [
            {"": k, "value": ", ".join(map(str, v)) if isinstance(v, list | tuple) else v}
            for k, v in items.items()
        ]
        return self.table(rows, columns=["", "value"])

    def image(self, path: str | os.PathLike[str], *, caption: str = "", alt: str = "") -> Page:
        """An embedded image with a caption; a missing file is said so in the page."""
        p = Path(path)
        if not p.is_file():
            return self.paragraph(f"(picture {p.name} was not written)", cls="warn")
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        self.blocks.append(
            f'<figure><img src="{data_uri(p)}" alt="{esc(alt or p.stem)}">{cap}</figure>'
        )
        return self

    def code(self, text: str, *, summary: str = "") -> Page:
        """Preformatted text; with ``summary``, folded under a ``<details>`` toggle."""
        pre = f"<pre>{esc(text)}</pre>"
        if summary:
            pre = f"<details><summary>{esc(summary)}</summary>{pre}</details>"
        self.blocks.append(pre)
        return self

    def json_block(self, obj: Any, *, summary: str) -> Page:
        """``obj`` as indented JSON, folded under ``summary``."""
        return self.code(json.dumps(obj, indent=2, sort_keys=True, default=str), summary=summary)

    def raw(self, fragment: str) -> Page:
        """Append an HTML fragment the caller built from escaped parts (see :mod:`.markdown`)."""
        self.blocks.append(fragment)
        return self

    def render(self) -> str:
        """The whole document."""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{STYLE}</style></head><body>"
            f'<h1>{esc(self.title)}</h1><p class="meta">{esc(self.subtitle)}</p>\n'
            + "\n".join(self.blocks)
            + "\n</body></html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the document to ``path`` atomically; return the path."""
        write_text_atomic(Path(path), self.render())
        return Path(path)


def fmt_ci(value: float | None, ci: Iterable[float] | None) -> str:
    """``0.677 [0.527, 0.837]``; an em dash for a missing value."""
    if value is None or value != value:
        return "—"
    lo, hi = (list(ci) + [float("nan")] * 2)[:2] if ci is not None else (float("nan"),) * 2
    return f"{value:.3f} [{_number(lo)}, {_number(hi)}]"
