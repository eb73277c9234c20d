"""A self-contained HTML page: sections of text, tables and figures, with every image embedded.

No scripts, no fonts, no style sheets or images from anywhere else: figures are PNG bytes in
``data:`` URIs and the style is one inline ``<style>`` block, so the page opens offline. All text
is escaped.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from ..files.atomic import write_with

_STYLE = """
body { font-family: system-ui, -apple-system, "DejaVu Sans", sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1.5em 2em 4em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.sub { color: #666; margin-top: 0; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.8em 0 1.2em; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
th, td { border: 1px solid #d8d8d8; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #444; margin-top: 0.3em; }
"""


@dataclass(frozen=True)
class ReportFigure:
    title: str
    caption: str
    png: bytes  # PNG bytes, embedded as a data URI


@dataclass(frozen=True)
class ReportTable:
    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = ()  # right-align these columns


@dataclass(frozen=True)
class ReportSection:
    title: str
    anchor: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[ReportTable, ...] = ()
    figures: tuple[ReportFigure, ...] = ()
    items: tuple[str, ...] = field(default=())  # a bullet list of findings


def data_uri(png: bytes) -> str:
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("report figures must be PNG bytes")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def table_html(table: ReportTable) -> str:
    numeric = table.numeric + (False,) * (len(table.header) - len(table.numeric))
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{_esc(v)}</td>' if numeric[i] else f"<td>{_esc(v)}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return (f"<table><caption>{_esc(table.caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def figure_html(fig: ReportFigure) -> str:
    return (f'<figure><img alt="{_esc(fig.title)}" src="{data_uri(fig.png)}">'
            f"<figcaption><strong>{_esc(fig.title)}.</strong> {_esc(fig.caption)}</figcaption></figure>")


def section_html(section: ReportSection) -> str:
    parts = [f'<section id="{_esc(section.anchor)}"><h2>{_esc(section.title)}</h2>']
    parts += [f"<p>{_esc(p)}</p>" for p in section.paragraphs]
    if section.items:
        parts.append("<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in section.items) + "</ul>")
    parts += [table_html(t) for t in section.tables]
    parts += [figure_html(f) for f in section.figures]
    parts.append("</section>")
    return "\n".join(parts)


def render_html(title: str, subtitle: str, sections: list[ReportSection]) -> str:
    """The whole page as one string."""
    nav = " ".join(f'<a href="#{_esc(s.anchor)}">{_esc(s.title)}</a>' for s in sections)
    body = "\n".join(section_html(s) for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>{_esc(title)}</h1><p class=\"sub\">{_esc(subtitle)}</p><nav>{nav}</nav>\n"
        f"{body}\n</body></html>\n"
    )


def write_report(path: Path, title: str, subtitle: str, sections: list[ReportSection]) -> Path:
    """Render and write the page atomically; returns its path."""
    text = render_html(title, subtitle, sections)

    write_with(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return Path(path)
