"""Direct calls against the provider's Batch API: 1,000 conversations × 2 turns, same job, same run.

Both configurations run the same chat job (a tool call in the second turn) against one simulator:

- baseline `direct`: `runner run --inline` (one chat completion per request, `limits.concurrency`
  conversations at once);
- `batch-api`: `runner run --batch-api` (rounds of JSONL files through `/v1/files` + `/v1/batches`,
  polled; embedded Redis for the exactly-once bookkeeping).

Printed per configuration: HTTP requests the server saw (the simulator's counters, reset in
between), wall time, and the cost `runner report` estimates at the default price table. Wall time
of the batch run is set by the simulator's compressed batch clock (`--batch-latency`, default 2 s
a round); OpenAI promises batch results within 24 hours. One JSON line per configuration, then a
table (the README's).

    python bench/batch_cost.py [--conversations 1000] [--batch-latency 2] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.reports.pricing import estimate, format_usd, load_prices
from runner.run import RunOptions, run_job
from runner.settings import Settings
from runner.simulator import SimulatorConfig, SimulatorRules, start_simulator

RULES = {
    "rules": [
        {"when": "(?i)refund", "reply": "Refunds are accepted within 30 days."},
        {
            "when": "(?i)order",
            "call": "lookup_order",
            "arguments": {"order_id": "A1"},
            "then": "Order: {{tool_output}}.",
        },
    ]
}


def write_job(path: Path, conversations: int, concurrency: int) -> None:
    tool = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}
    job = {
        "name": "batch-cost",
        "api": "chat",
        "model": "gpt-4o-mini",
        "assistants": {"support": {"instructions": "You help customers with refunds.", "tools": [tool]}},
        "conversations": [
            {
                "id": f"c{i:04d}",
                "tool_outputs": {"lookup_order": '{"status": "shipped"}'},
                "turns": [
                    {"user": f"I want a refund for order {i}", "expect": [{"icontains": "refund"}]},
                    {"user": "Where is my order?", "expect": [{"contains": "shipped"}]},
                ],
            }
            for i in range(conversations)
        ],
        "limits": {"concurrency": concurrency},
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=1000)
    ap.add_argument("--batch-latency", type=float, default=2.0)
    ap.add_argument("--latency", type=float, default=0.05, help="simulator latency of one direct request")
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    prices = load_prices()
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.yaml"
        write_job(job, args.conversations, args.concurrency)
        config = SimulatorConfig(
            latency_s=args.latency,
            jitter=0.0,
            batch_latency_s=args.batch_latency,
            rules=SimulatorRules.model_validate(RULES),
        )
        with start_simulator(config) as sim:
            settings = Settings(api_key="sk-bench", base_url=sim.base_url, home=Path(tmp) / "home")
            for mode in ("direct", "batch-api"):
                sim.reset_stats()
                options = RunOptions(
                    output=str(Path(tmp) / f"{mode}.jsonl"),
                    inline=mode == "direct",
                    batch_api=mode == "batch-api",
                    progress=False,
                )
                began = time.monotonic()
                result = run_job(str(job), options, settings)
                wall = time.monotonic() - began
                cost = estimate(result.records, prices)
                rows.append(
                    {
                        "mode": mode,
                        "conversations": len(result.records),
                        "passed": sum(1 for r in result.records if r["passed"]),
                        "requests": sim.stats()["requests_total"],
                        "wall_s": round(wall, 2),
                        "cost_usd": round(cost.usd, 6),
                        "cost": cost.describe(),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"| {'mode':<10} | conversations × turns | requests | wall time | cost (default prices) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']:<10} | {r['conversations']} × 2 ({r['passed']} passed) | {r['requests']} "
            f"| {r['wall_s']:.1f} s | {format_usd(r['cost_usd'])} |"
        )


if __name__ == "__main__":
    main()
