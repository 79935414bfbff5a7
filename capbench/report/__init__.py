"""The leaderboard summary: records -> one tidy frame (`frame`) -> declared tables (`tables`, `builtin`)
-> the JSON and one markdown writer (`markdown`, tabulate).

A new leaderboard column: `register_column(name, fn(record))`, then `register_table(Table(...))` showing it
(or a replacement of a built-in table, by name).
"""

from capbench.report.frame import record_row, records_frame, register_column
from capbench.report.markdown import markdown_table
from capbench.report.summary import render_markdown, summarize
from capbench.report.tables import TABLES, Col, Table, get_table, register_table, render_table, table_rows

__all__ = [
    "TABLES",
    "Col",
    "Table",
    "get_table",
    "markdown_table",
    "record_row",
    "records_frame",
    "register_column",
    "register_table",
    "render_markdown",
    "render_table",
    "summarize",
    "table_rows",
]
