"""Where a grid's cells run: `local` (this process, `capbench.runner.run_grid`) or `ray` (a Ray cluster).

Every executor writes the same records into the same record store (`<out>/records/<cell_id>.json`, atomic
replace), so a leaderboard does not depend on where the cells ran. See docs/scaling.md.
"""

from __future__ import annotations

from capbench.executors.plan import Job, plan_jobs

__all__ = ["Job", "plan_jobs"]
