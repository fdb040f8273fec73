"""Using assistant-runner from Python: run a job file against the built-in simulator, in process,
and look at the records. Run it from the repository root: `python examples/python_api.py`."""

from __future__ import annotations

from runner import Outcome, RunOptions, expand, load_job, outcome, run_job

JOB = "jobs/quickstart.yaml"

job = load_job(JOB)  # raises runner.errors.JobFileError listing every problem
print(f"{job.name}: {len(expand(job))} conversations")

result = run_job(
    JOB, RunOptions(simulate=True, inline=True, progress=False, output="runs/api-example.jsonl")
)
for record in result.records:
    failed = [c for t in record["turns"] for c in t["checks"] if not c["passed"]]
    status, passed = record["status"], record["passed"]
    print(f"{record['conversation_id']}: {status}, passed={passed}, {len(failed)} failed checks")

passed = sum(outcome(r) is Outcome.PASSED for r in result.records)
print(f"{passed}/{len(result.records)} passed, transcripts in {result.output}")
