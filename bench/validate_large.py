"""How long `runner validate` takes on a job with a large dataset (load + validate + expand).

Generates, in a temp dir, a job file whose conversation reads a 10,000-row dataset (two turns,
three checks with `{{var}}`s, a 2-model matrix: 20,000 tasks), then times, best of N runs:

- baseline: what merely reading the same files costs (`yaml.safe_load` of the job with libyaml,
  `json.loads` of every dataset line, or `csv.DictReader`) -- no validation, no expansion;
- load_job: read + validate + load the dataset + expand (what `runner validate` does);
- expand: the (cached) task list afterwards, as `runner run` asks for it.

Prints one JSON line per configuration. Usage: python bench/validate_large.py [--rows N] [--repeat N]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from runner.jobs import expand, load_job

JOB = """\
name: large
model: gpt-4o-mini
assistants:
  triage: {{instructions: Classify the ticket.}}
conversations:
  - id: classify
    dataset: rows.{suffix}
    vars: {{team: support}}
    turns:
      - user: 'Ticket for {{{{team}}}}: {{{{ticket}}}}'
        expect:
          - contains: 'Category: {{{{category}}}}'
          - regex: '^Category: \\w+$'
          - max_tokens: 20
      - user: Thanks
        expect:
          - not_icontains: sorry
matrix:
  model: [gpt-4o-mini, gpt-4.1-mini]
"""


def make(folder: Path, rows: int, suffix: str) -> Path:
    categories = ["billing", "account", "technical", "shipping", "other"]
    data = [
        {
            "id": f"t{i:05d}",
            "ticket": f"ticket number {i} about {categories[i % 5]}",
            "category": categories[i % 5],
        }
        for i in range(rows)
    ]
    if suffix == "jsonl":
        (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    else:
        lines = ["id,ticket,category", *(f"{r['id']},{r['ticket']},{r['category']}" for r in data)]
        (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    job = folder / f"job-{suffix}.yaml"
    job.write_text(JOB.format(suffix=suffix))
    return job


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Best wall-clock and best CPU seconds of `repeat` runs (CPU is steadier on a shared machine)."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def baseline(job: Path) -> int:
    """Only reading the files: libyaml for the job, json / csv for the rows."""
    data = yaml.load(job.read_text(), Loader=yaml.CSafeLoader)
    text = (job.parent / f"rows.{job.stem.split('-')[1]}").read_text()
    if job.stem.endswith("jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line]
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return len(data["conversations"]) + len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for suffix in ("jsonl", "csv"):
            job = make(folder, args.rows, suffix)
            base_s, base_cpu, _ = best(lambda job=job: baseline(job), args.repeat)
            load_s, load_cpu, loaded = best(lambda job=job: load_job(job), args.repeat)
            expand_s, _, tasks = best(lambda loaded=loaded: expand(loaded), args.repeat)
            record = {
                "bench": "validate_large",
                "dataset": suffix,
                "rows": args.rows,
                "tasks": len(tasks),
                "baseline_parse_s": round(base_s, 4),
                "baseline_parse_cpu_s": round(base_cpu, 4),
                "load_validate_expand_s": round(load_s, 4),
                "load_validate_expand_cpu_s": round(load_cpu, 4),
                "expand_cached_s": round(expand_s, 5),
                "per_task_us": round(load_s / len(tasks) * 1e6, 2),
                "vs_baseline": round(load_s / base_s, 1),
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
