"""Tables that stay readable on a narrow terminal (80 columns) and in piped output.

A rich table squeezed below the width its longest words need breaks headers
mid-word and cuts cells with an ellipsis.  :func:`print_rows` prints a table
when every column can hold its longest word, and otherwise one block per row:
the first column as a heading, then ``header: value`` lines that wrap at word
boundaries, so nothing is cut.
"""

from __future__ import annotations

from typing import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

BORDER = 3  # a column's share of rich's box drawing and padding


def _longest_word(text: str) -> int:
    plain = Text.from_markup(text).plain
    return max((len(word) for word in plain.split()), default=1)


def needed_width(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """The width below which some header or cell would break inside a word."""
    widths = [max(_longest_word(h), *(_longest_word(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return sum(widths) + BORDER * len(headers) + 1


def print_rows(console: Console, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
               show_lines: bool = False) -> None:
    """``rows`` (rich markup allowed) as a table when the console is wide enough, else as blocks."""
    if console.width >= needed_width(headers, rows):
        table = Table(title=title, title_justify="left", show_lines=show_lines)
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    console.print(f"[bold]{escape(title)}[/]")
    for row in rows:
        console.print(f"\n[bold]{headers[0]} {row[0]}[/]")
        for header, value in zip(headers[1:], row[1:]):
            lines = value.splitlines() or ["-"]
            console.print(f"  {header}: {lines[0]}")
            for more in lines[1:]:
                console.print(f"    {more}")
