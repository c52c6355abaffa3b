"""The Markdown subset pathfl's reports use, as escaped HTML (for ``report.md`` →
``report.html``): ``#`` headings, paragraphs, pipe tables, fenced code, ``![alt](file)``
images (embedded as ``data:`` URIs, resolved against a base folder), ``**bold**``,
``*emphasis*`` and `` `code` ``. Anything else stays literal text (escaped)."""

from __future__ import annotations

import re
from pathlib import Path

from pathfl.report.html import data_uri, esc

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)\s*$")
_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")


def inline(text: str) -> str:
    """Escape ``text`` and turn `` `code` ``, ``**bold**`` and ``*em*`` into tags."""
    out, at = [], 0
    for m in _INLINE.finditer(text):
        out.append(esc(text[at : m.start()]))
        code, bold, em = m.groups()
        if code is not None:
            out.append(f"<code>{esc(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline(bold)}</strong>")
        else:
            out.append(f"<em>{esc(em)}</em>")
        at = m.end()
    out.append(esc(text[at:]))
    return "".join(out)


def _image(alt: str, target: str, base: Path) -> str:
    path = (base / target).resolve()
    if not path.is_file():
        return f'<p class="warn">(picture {esc(target)} was not written)</p>'
    return f'<figure><img src="{data_uri(path)}" alt="{esc(alt)}"></figure>'


def _table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    head = "".join(f"<th>{inline(c)}</th>" for c in cells(lines[0]))
    body = "".join(
        "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(line)) + "</tr>"
        for line in lines[2:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_table(lines: list[str], i: int) -> bool:
    return (
        lines[i].lstrip().startswith("|")
        and i + 1 < len(lines)
        and re.fullmatch(r"\s*\|(\s*:?-+:?\s*\|)+\s*", lines[i + 1]) is not None
    )


def to_html(md: str, *, base: str | Path) -> str:
    """HTML body fragment of ``md``; image paths are relative to ``base``."""
    lines, out, para = md.splitlines(), [], []
    base = Path(base)

    def flush() -> None:
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            flush()
            j = next(
                (k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines)
            )
            out.append(f"<pre>{esc(chr(10).join(lines[i + 1 : j]))}</pre>")
            i = j + 1
            continue
        if _is_table(lines, i):
            flush()
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
            continue
        heading = re.match(r"^(#{1,4})\s+(.*)$", line)
        image = _IMAGE.match(line.strip())
        if heading:
            flush()
            n = len(heading.group(1))
            out.append(f"<h{n}>{inline(heading.group(2))}</h{n}>")
        elif image:
            flush()
            out.append(_image(image.group(1), image.group(2), base))
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    return "\n".join(out)
