"""The published leaderboards are exactly what their committed records render to."""

import re
from pathlib import Path

import pytest

from capbench.publish import publish

LEADERBOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
PUBLISHED = sorted(p for p in LEADERBOARDS.glob("*.md") if p.name != "README.md")


@pytest.mark.parametrize("board", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_published_leaderboard_regenerates_from_its_records(board, tmp_path):
    text = board.read_text()
    command = re.search(r"^- regenerate: `(.+)`$", text, re.M).group(1)
    run_dirs = re.search(r"capbench leaderboard --runs (.+?) --out", command).group(1).split()
    out = tmp_path / board.name
    publish([LEADERBOARDS.parent / d for d in run_dirs], out, command, plots=False)
    without_plots = text.split("\n## Plots\n")[0].rstrip() + "\n"
    assert out.read_text().rstrip() + "\n" == without_plots
    assert out.with_suffix(".json").read_text() == board.with_suffix(".json").read_text()
