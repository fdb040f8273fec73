"""`runner run --batch-api` against the simulator's Batch API: the same transcripts as direct
calls at one request per round (not per turn), exactly once across crashes, retries of errored
lines, expiry, cancel, and the assistants API refused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis as redis_lib
import yaml
from click.testing import CliRunner

from runner.cli import main
from runner.jobs import expand, load_job
from runner.queue.batch import Batch
from runner.queue.batch_api import BatchApiRun, start_batch_api
from runner.queue.batch_api_jobs import provider_for
from runner.queue.redis_server import connect, embedded_redis
from runner.run import RunOptions, run_job
from runner.settings import Settings
from runner.simulator import RunningSimulator

BATCH_LATENCY_S = 0.3
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


def write_job(path: Path, api: str, conversations: int = 2, **extra: Any) -> Path:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
    convs = [
        {
            "id": f"c{i}",
            "tool_outputs": {"lookup_order": f'{{"status": "s{i}"}}'},
            "turns": [
                {"user": f"I want a refund {i}", "expect": [{"icontains": "refund"}]},
                {
                    "user": "Where is my order?",
                    "expect": [{"tool_called": "lookup_order"}, {"contains": f"s{i}"}],
                },
            ],
        }
        for i in range(conversations)
    ]
    job = {
        "name": f"batch-{api}",
        "api": api,
        "model": "gpt-4o-mini",
        "assistants": {"support": {"instructions": "You help.", "tools": [tool]}},
        "conversations": convs,
        "simulator": RULES,
        **extra,
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[RunningSimulator], Settings]]:
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)

    def point_at(sim: RunningSimulator) -> Settings:
        monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        return Settings.from_env()

    yield point_at


@pytest.fixture
def redis_client(tmp_path: Path) -> Iterator[redis_lib.Redis]:
    """A real Redis server the test and the runs share (as `--redis-url`): `client.url`."""
    with embedded_redis(tmp_path / "shared") as server:
        client = connect(server.url)
        client.url = server.url  # type: ignore[attr-defined]
        yield client
        client.close()


def routes(sim: RunningSimulator) -> dict[str, int]:
    return sim.stats()["by_route"]


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    turns = [
        {k: t[k] for k in ("index", "user", "assistant", "run_status", "tool_calls", "checks", "usage")}
        for t in record["turns"]
    ]
    return {
        "id": record["conversation_id"],
        "status": record["status"],
        "passed": record["passed"],
        "turns": turns,
    }


def run(job: Path, settings: Settings, out: Path, **options: Any) -> Any:
    return run_job(str(job), RunOptions(output=str(out), progress=False, **options), settings)


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_batch_api_gives_the_direct_transcripts_at_one_request_per_round(
    api: str, tmp_path: Path, sim_factory: Callable[..., RunningSimulator], env: Callable[..., Settings]
) -> None:
    sim = sim_factory(rules=RULES, batch_latency_s=BATCH_LATENCY_S)
    settings = env(sim)
    job = write_job(tmp_path / "job.yaml", api, conversations=3)
    direct = run(job, settings, tmp_path / "direct.jsonl", inline=True)
    sim.reset_stats()
    batched = run(job, settings, tmp_path / "batch.jsonl", batch_api=True)
    assert [comparable(r) for r in batched.records] == [comparable(r) for r in direct.records]
    assert all(r["passed"] is True for r in batched.records)
    for record in batched.records:
        assert record["api"] == api and record["thread_id"] is None
        assert {t["via"] for t in record["turns"]} == {"batch"}
        assert all(t["provider_batch_id"].startswith("batch_") for t in record["turns"])
        assert record["requests"] == 3  # turn 0; turn 1's tool call; turn 1's tool output
    # Three rounds (turn 0, turn 1, turn 1's tool outputs): one file and one batch each, for all
    # three conversations; no request per turn.
    seen = routes(sim)
    assert seen["POST /v1/files"] == 3 and seen["POST /v1/batches"] == 3
    assert seen["GET /v1/files/{file_id}/content"] == 3
    assert not any(r in seen for r in ("POST /v1/chat/completions", "POST /v1/responses"))
    assert json.loads((tmp_path / "batch.jsonl").read_text().splitlines()[0])["turns"][0]["via"] == "batch"


def test_batch_api_splits_a_round_at_the_file_limits(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    env: Callable[..., Settings],
    redis_client: redis_lib.Redis,
) -> None:
    sim = sim_factory(rules=RULES, batch_latency_s=BATCH_LATENCY_S)
    settings = env(sim)
    job = load_job(str(write_job(tmp_path / "job.yaml", "chat", conversations=5)))
    batch_id = start_batch_api(job, expand(job), redis=redis_client, output=str(tmp_path / "o.jsonl"))
    rounds = BatchApiRun(redis_client, batch_id, provider_for(settings, 4), max_lines=2)
    assert len(rounds.upload_round()) == 3  # 5 lines, at most 2 a file
    step = rounds.step()
    assert len(step.provider_batches) == 3 and not step.done
    assert routes(sim)["POST /v1/files"] == 3


def test_batch_api_resumes_after_a_crash_between_upload_and_batch_create(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    env: Callable[..., Settings],
    redis_client: redis_lib.Redis,
) -> None:
    sim = sim_factory(rules=RULES, batch_latency_s=BATCH_LATENCY_S)
    settings = env(sim)
    path = write_job(tmp_path / "job.yaml", "chat")
    job = load_job(str(path))
    out = tmp_path / "out.jsonl"
    batch_id = start_batch_api(job, expand(job), redis=redis_client, output=str(out))
    BatchApiRun(redis_client, batch_id, provider_for(settings, 4)).upload_round()  # ... and the process dies
    assert routes(sim)["POST /v1/files"] == 1 and "POST /v1/batches" not in routes(sim)
    result = run(path, settings, out, batch_api=True, redis_url=redis_client.url)
    assert result.batch_id == batch_id
    assert [r["passed"] for r in result.records] == [True, True]
    assert (routes(sim)["POST /v1/files"], routes(sim)["POST /v1/batches"]) == (3, 3)


def test_batch_api_finds_an_upload_whose_answer_was_lost(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    env: Callable[..., Settings],
    redis_client: redis_lib.Redis,
) -> None:
    sim = sim_factory(rules=RULES, batch_latency_s=BATCH_LATENCY_S)
    settings = env(sim)
    path = write_job(tmp_path / "job.yaml", "chat")
    job = load_job(str(path))
    out = tmp_path / "out.jsonl"
    batch_id = start_batch_api(job, expand(job), redis=redis_client, output=str(out))
    rounds = BatchApiRun(redis_client, batch_id, provider_for(settings, 4))
    # The intent was written, the upload reached the provider, its answer never came back.
    [part] = rounds.parts(0, rounds._states(0))
    key = f"runner:batch:{batch_id}:pb:round:0"
    redis_client.hset(key, mapping={"p0:sha": part.sha, "p0:uploading": "1"})
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
    lost = client.files.create(file=(rounds._filename(0, part), part.content), purpose="batch")
    result = run(path, settings, out, batch_api=True, redis_url=redis_client.url)
    assert [r["passed"] for r in result.records] == [True, True]
    assert routes(sim)["POST /v1/files"] == 3  # the lost one, then rounds 1 and 2
    assert client.batches.list().data[-1].input_file_id == lost.id


def test_batch_api_resumes_after_a_crash_after_batch_create(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    env: Callable[..., Settings],
    redis_client: redis_lib.Redis,
) -> None:
    sim = sim_factory(rules=RULES, batch_latency_s=BATCH_LATENCY_S)
    settings = env(sim)
    path = write_job(tmp_path / "job.yaml", "responses")
    job = load_job(str(path))
    out = tmp_path / "out.jsonl"
    batch_id = start_batch_api(job, expand(job), redis=redis_client, output=str(out))
    step = BatchApiRun(redis_client, batch_id, provider_for(settings, 4)).step()  # ... and the process dies
    assert not step.done and len(step.provider_batches) == 1
    # A batch create whose answer was lost is found by its input file, not created again.
    redis_client.hdel(f"runner:batch:{batch_id}:pb:round:0", "p0:batch")
    result = run(path, settings, out, batch_api=True, redis_url=redis_client.url)
    assert [r["passed"] for r in result.records] == [True, True]
    assert result.records[0]["turns"][0]["provider_batch_id"] == step.provider_batches[0]
    assert (routes(sim)["POST /v1/files"], routes(sim)["POST /v1/batches"]) == (3, 3)


def test_batch_api_retries_errored_lines_then_records_the_error(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], env: Callable[..., Settings]
) -> None:
    sim = sim_factory(rules=RULES, batch_latency_s=BATCH_LATENCY_S, batch_fault_rate=1.0)
    settings = env(sim)
    job = write_job(tmp_path / "job.yaml", "chat", limits={"max_attempts": 2})
    result = run(job, settings, tmp_path / "out.jsonl", batch_api=True)
    for record in result.records:
        assert record["status"] == "error" and record["passed"] is False
        assert record["error"].startswith("turn 0: HTTP 500 server_error:")
        assert record["error"].endswith("(after 2 attempts)")
        assert record["turns"][0]["via"] == "batch" and record["requests"] == 2
    assert routes(sim)["POST /v1/batches"] == 2  # the first try, and one retry round


def test_batch_api_sends_expired_lines_again(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], env: Callable[..., Settings]
) -> None:
    # Every batch expires with half its lines answered: 4 → 2 → 1 → 0 answered per round.
    sim = sim_factory(rules=RULES, batch_latency_s=0.2, batch_expire_rate=1.0)
    settings = env(sim)
    path = tmp_path / "job.yaml"
    write_job(path, "chat", conversations=4, limits={"max_attempts": 3})
    data = yaml.safe_load(path.read_text())
    for conv in data["conversations"]:
        conv["turns"] = conv["turns"][:1]
    path.write_text(yaml.safe_dump(data))
    result = run(path, settings, tmp_path / "out.jsonl", batch_api=True)
    statuses = {r["conversation_id"]: r["status"] for r in result.records}
    assert sorted(statuses.values()) == ["completed", "completed", "completed", "error"]
    [failed] = [r for r in result.records if r["status"] == "error"]
    assert "batch_expired" in failed["error"] and failed["error"].endswith("(after 3 attempts)")
    assert routes(sim)["POST /v1/batches"] == 3


def test_batch_api_cancel_cancels_the_provider_batches(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    env: Callable[..., Settings],
    redis_client: redis_lib.Redis,
) -> None:
    sim = sim_factory(rules=RULES, batch_latency_s=30.0)
    settings = env(sim)
    path = write_job(tmp_path / "job.yaml", "chat")
    job = load_job(str(path))
    out = tmp_path / "out.jsonl"
    batch_id = start_batch_api(job, expand(job), redis=redis_client, output=str(out))
    [provider_batch] = BatchApiRun(redis_client, batch_id, provider_for(settings, 4)).step().provider_batches
    result = CliRunner().invoke(main, ["cancel", batch_id, "--redis-url", redis_client.url])
    assert result.exit_code == 0, result.output
    assert result.output == f"batch {batch_id} cancelled; provider batches cancelled: {provider_batch}\n"
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
    assert client.batches.retrieve(provider_batch).status in ("cancelling", "cancelled")
    result = CliRunner().invoke(main, ["collect", batch_id, "--redis-url", redis_client.url])
    assert result.exit_code == 1
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["cancelled", "cancelled"]
    result = CliRunner().invoke(main, ["cancel", "no-such-batch", "--redis-url", redis_client.url])
    assert result.exit_code == 2


def test_batch_api_with_the_assistants_api_is_bad_input(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], env: Callable[..., Settings]
) -> None:
    sim = sim_factory(rules=RULES)
    env(sim)
    job = write_job(tmp_path / "job.yaml", "assistants")
    result = CliRunner().invoke(main, ["run", str(job), "--batch-api", "--no-progress"])
    assert result.exit_code == 2
    assert "the Assistants API has no batch endpoint" in result.output
    assert sim.stats()["requests_total"] == 0
    write_job(tmp_path / "job2.yaml", "assistants", batch_api=True)
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "job2.yaml")])
    assert result.exit_code == 2
    assert "batch_api: the Assistants API has no batch endpoint" in result.output


def test_batch_api_turns_are_priced_at_the_batch_price(tmp_path: Path) -> None:
    from runner.reports.pricing import estimate, load_prices

    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000, "total_tokens": 2_000_000}
    turn = {"index": 0, "usage": usage, "via": "batch"}
    record = {"model": "gpt-4o-mini", "usage": usage, "turns": [turn]}
    direct = {**record, "turns": [{**turn, "via": "direct"}]}
    table = load_prices()
    assert estimate([direct], table).usd == pytest.approx(0.75)  # 0.15 + 0.60 per 1M
    cost = estimate([record], table)  # type: ignore[list-item]
    assert cost.usd == pytest.approx(0.375) and cost.batch_saving == pytest.approx(0.375)
    assert cost.describe() == "$0.3750 (Batch API: $0.3750 saved against direct calls)"
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-4o-mini: {input: 0.15, output: 0.60, batch_input: 0.1, batch_output: 0.2}\n")
    assert estimate([record], load_prices(str(prices))).usd == pytest.approx(0.3)  # type: ignore[list-item]


def test_batch_api_queue_mode_polls_with_scheduled_jobs_holding_no_worker(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    env: Callable[..., Settings],
    redis_client: redis_lib.Redis,
) -> None:
    from rq import SimpleWorker
    from rq.registry import ScheduledJobRegistry
    from rq.serializers import JSONSerializer

    from runner.queue.conversations import rq_queue

    sim = sim_factory(rules=RULES, batch_latency_s=1.0)
    env(sim)
    path = write_job(tmp_path / "job.yaml", "chat", batch_api=True)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["enqueue", str(path), "--redis-url", redis_client.url, "-o", str(out)])
    assert result.exit_code == 0, result.output
    batch_id = result.output.strip()
    queue = rq_queue(redis_client)
    scheduled_seen = 0
    deadline = time.monotonic() + 60
    while not Batch(redis_client, batch_id).require().finished:
        assert time.monotonic() < deadline
        SimpleWorker([queue], connection=redis_client, serializer=JSONSerializer).work(
            burst=True, with_scheduler=True
        )
        scheduled_seen += len(ScheduledJobRegistry(queue=queue))
        time.sleep(0.2)
    # Each poll was its own short job, the next one waiting as a scheduled job (not a worker).
    assert scheduled_seen > 0
    assert int(redis_client.get(f"runner:batch:{batch_id}:pb:polls")) > 3  # more polls than rounds
    result = CliRunner().invoke(main, ["collect", batch_id, "--redis-url", redis_client.url])
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["passed"] for r in records] == [True, True]
    assert {t["via"] for r in records for t in r["turns"]} == {"batch"}
    assert routes(sim)["POST /v1/batches"] == 3
