"""Job files: models, YAML with line numbers, datasets, cross-key validation, expansion into tasks, cron.

load_job(path) -> Job           validate (every problem at once, `PATH:LINE: where: what`)
expand(job) -> [ConversationTask]
job_schema() -> dict            the JSON Schema `runner schema` prints
"""

from runner.jobs.loader import assistant_specs, expand, job_schema, load_job
from runner.jobs.models import Job, render_output

__all__ = ["Job", "assistant_specs", "expand", "job_schema", "load_job", "render_output"]
