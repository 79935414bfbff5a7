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


def test_the_conclusions_quote_the_published_board():
    """Every interval and mean ± std that leaderboards/README.md quotes from default-minilm.md is on that board
    (written with the board's hyphen-minus), so the conclusions cannot drift from a re-rendered board."""
    readme = (LEADERBOARDS / "README.md").read_text()
    section = readme.split("## What `default-minilm.md` says about CAP")[1].split("\n## ")[0]
    board = (LEADERBOARDS / "default-minilm.md").read_text()
    number = r"[−+]?\d+\.\d+"
    quoted = re.findall(rf"{number} \[{number}, {number}\]|\d+\.\d+ ± \d+\.\d+", section)
    assert len(quoted) >= 40, quoted
    missing = [q for q in quoted if q.replace("−", "-") not in board]
    assert not missing, f"quoted in leaderboards/README.md but not on default-minilm.md: {missing}"
