"""Using assistant-runner from Python: run a job file against the built-in simulator, in process,
and look at the records. Run it from the repository root: `python examples/python_api.py`."""

from __future__ import annotations

from runner.jobfile import expand, load_job
from runner.pipeline import RunOptions, run_job
from runner.report import summarize

JOB = "jobs/quickstart.yaml"

job = load_job(JOB)  # raises runner.errors.JobFileError listing every problem
print(f"{job.name}: {len(expand(job))} conversations")

outcome = run_job(
    JOB, RunOptions(simulate=True, inline=True, progress=False, output="runs/api-example.jsonl")
)
for record in outcome.records:
    failed = [c for t in record["turns"] for c in t["checks"] if not c["passed"]]
    status, passed = record["status"], record["passed"]
    print(f"{record['conversation_id']}: {status}, passed={passed}, {len(failed)} failed checks")

summary = summarize(outcome.records)
print(f"pass rate {summary.pass_rate:.0%}, {summary.tokens} tokens, transcripts in {outcome.output}")
