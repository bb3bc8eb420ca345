"""The one kit for galclip's self-contained HTML pages (the evaluation report, predict's truth page): a style, metric
tables and figures inlined as base64 PNG, so a page is one file that opens anywhere with nothing fetched."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path

CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.7em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
"""


def cell(value: object, spec: str = ".4g") -> str:
    """One table cell's text: "–" for None and NaN, floats by ``spec``, anything else escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def table(title: str, row_names: list[str], columns: list[str], cells: Mapping, spec: str = ".4g") -> str:
    """An <h2> title and a table with rows ``row_names`` and columns ``columns`` read from cells[row][col]."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *columns])
    body = "".join(
        "<tr><td>"
        + html.escape(r)
        + "</td>"
        + "".join(f"<td>{cell((cells.get(r) or {}).get(c), spec)}</td>" for c in columns)
        + "</tr>"
        for r in row_names
    )
    return f"<h2>{html.escape(title)}</h2>\n<table><tr>{head}</tr>{body}</table>\n"


def figure(name: str, png: Path) -> str:
    """A PNG file inlined as a <figure> with its name as caption."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>\n"
    )


def page(title: str, body: str) -> str:
    """A whole HTML document: ``title`` as <title> and <h1>, then ``body`` (HTML)."""
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}</body></html>\n"
    )
