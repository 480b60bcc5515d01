"""The report's documents: headed sections of blocks (paragraphs, Tables, Figures) as Markdown and as one
self-contained HTML page."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from byol_bench.errors import UserError
from byol_bench.results.tables import write_atomic


@dataclass
class Table:
    title: str
    frame: pd.DataFrame
    above: str = ""  # the protocol, or what the table holds
    links: tuple[str, ...] = ()  # columns of paths relative to the report: each cell links to its file


@dataclass
class Figure:
    name: str  # the file stem under figures/
    title: str
    caption: str
    png: bytes | None = None  # None: skipped, for the reason in caption


Section = tuple[str, list]  # a heading and its blocks: paragraphs (str), Tables and Figures


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown pipe table (the one place that escapes cells and writes rows)."""
    def row(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    return "\n".join([row(frame.columns), "|" + "---|" * len(frame.columns),
                      *(row(cells) for cells in frame.itertuples(index=False))])


def _markdown_block(block) -> list[str]:
    if isinstance(block, Table):
        frame = block.frame.assign(**{column: [f"[{path}]({path})" if isinstance(path, str) else "—"
                                               for path in block.frame[column]] for column in block.links})
        return [f"### {block.title}", "", *([block.above, ""] if block.above else []), markdown_table(frame), ""]
    if isinstance(block, Figure) and block.png is not None:
        return [f"### {block.title}", "", f"![{block.title}](figures/{block.name}.png)", "",
                f"{block.caption} ([SVG](figures/{block.name}.svg))", ""]
    if isinstance(block, Figure):
        return [f"### {block.title}", "", f"*Not drawn: {block.caption}.*", ""]
    return [block, ""]


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            lines += _markdown_block(block)
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td:not(:last-child) { white-space: nowrap; }
th { background: #f2f2f2; }
.above { color: #555; font-size: 0.9em; }
.skipped { color: #a33; font-style: italic; }
figure { margin: 1em 0 2em; }
img { max-width: 100%; }
"""


def _html_block(block) -> str:
    escape = html.escape
    if isinstance(block, Table):
        above = f'<p class="above">{escape(block.above)}</p>' if block.above else ""
        cells = block.frame.map(lambda cell: escape(str(cell)))
        cells = cells.assign(**{column: [f'<a href="{escape(path)}">{escape(path)}</a>' if isinstance(path, str) else "—"
                                         for path in block.frame[column]] for column in block.links})
        return f"<h3>{escape(block.title)}</h3>{above}" + cells.to_html(index=False, border=0, escape=False)
    if isinstance(block, Figure) and block.png is not None:
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<h3>{escape(block.title)}</h3><figure><img src="data:image/png;base64,{data}" '
                f'alt="{escape(block.title)}"><figcaption>{escape(block.caption)} '
                f'(<a href="figures/{block.name}.svg">SVG</a>)</figcaption></figure>')
    if isinstance(block, Figure):
        return f'<h3>{escape(block.title)}</h3><p class="skipped">Not drawn: {escape(block.caption)}.</p>'
    return f"<p>{escape(block)}</p>"


def to_html(title: str, sections: list[Section]) -> str:
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
             # An empty icon: the browser asks for no favicon file, which a report folder has not.
             f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>', f"<h1>{html.escape(title)}</h1>"]
    for heading, blocks in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [_html_block(block) for block in blocks]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def writable(folder: Path) -> Path:
    """``folder``, created if need be, or a UserError saying why a report cannot go there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the report folder {folder} ({error.strerror}); check its permissions") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the report into {folder}; check its permissions")
    return folder


def write_documents(folder: Path, stem: str, title: str, sections: list[Section]) -> Path:
    """``<stem>.md`` and ``<stem>.html`` in ``folder``; returns the HTML path."""
    write_atomic(writable(folder) / f"{stem}.md", to_markdown(title, sections).encode())
    path = folder / f"{stem}.html"
    write_atomic(path, to_html(title, sections).encode())
    return path
