"""`runner run`: inline or queued execution, the simulated environment, progress.

run_job(path, RunOptions(...)) -> RunOutcome
"""

from runner.run.job import run_job
from runner.run.options import RunOptions, RunOutcome

__all__ = ["RunOptions", "RunOutcome", "run_job"]
