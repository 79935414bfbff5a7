"""The one markdown table writer (tabulate): `| a | b |` rows, `|---|---:|` under the header, no padding."""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import DataRow, TableFormat, tabulate


def _format(aligns: Sequence[str]) -> TableFormat:
    rule = "|" + "|".join("---:" if a == "right" else "---" for a in aligns) + "|"
    row = DataRow("| ", " | ", " |")
    return TableFormat(
        lineabove=None,
        linebelowheader=lambda widths, _aligns: rule,
        linebetweenrows=None,
        linebelow=None,
        headerrow=row,
        datarow=row,
        padding=0,
        with_header_hide=None,
    )


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], aligns: Sequence[str] | None = None
) -> str:
    """A GitHub markdown table; cells are shown as given (str()), unpadded, so the text diffs cleanly.
    `aligns`: per column "left" (default) or "right" (a `---:` rule)."""
    aligns = list(aligns or ["left"] * len(header))
    text = tabulate(
        [[str(cell) for cell in row] for row in rows],
        headers=list(header),
        tablefmt=_format(aligns),
        disable_numparse=True,
        stralign=None,
    )
    if not rows:  # tabulate drops the rule of a header-only table
        text = text.split("\n")[0] + "\n" + _format(aligns).linebelowheader(None, None)
    return text
