"""Preparing assistants never changes one the runner did not create for the job (issue 17, item 1).

Against the real simulator with the real SDK: a hand-made same-named assistant stops the run with
exit 2 and is left untouched; `adopt: true` takes it over; two jobs sharing a name each keep their
own assistant."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from click.testing import CliRunner
from test_engine_support import RULES, SPEC, write_job

from runner.cli import main
from runner.engine.backends.assistants import AssistantsBackend
from runner.engine.limits import Unlimited
from runner.engine.retry import Caller
from runner.errors import AssistantConflictError
from runner.simulator import RunningSimulator


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's, on every Assistants method
        yield


def hand_made(client: openai.OpenAI) -> Any:
    return client.beta.assistants.create(
        model="gpt-4.1", name=SPEC.name, instructions="Hand-tuned prod prompt."
    )


def test_assistant_upsert_refuses_a_hand_made_same_named_assistant(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory()
    client = openai_client(sim)
    mine = hand_made(client)
    sim.reset_stats()

    with pytest.raises(AssistantConflictError) as e:
        AssistantsBackend(client).prepare([SPEC], Caller(Unlimited()), job="refund-bot")
    assert str(e.value) == (
        f"assistant 'Support Bot' ({mine.id}) already exists and was not created by assistant-runner for"
        f" job 'refund-bot': the runner will not change it. Either use it as it is (set `id: {mine.id}`"
        " under assistants.support), give the job's assistant another `name:`, or let this job take it"
        " over and update it (set `adopt: true` under assistants.support)"
    )
    assert e.value.exit_code == 2
    assert dict(sim.stats()["by_route"]) == {"GET /v1/assistants": 1}  # listed, nothing written
    server = client.beta.assistants.retrieve(mine.id)
    assert (server.model, server.instructions, server.metadata) == ("gpt-4.1", "Hand-tuned prod prompt.", {})


def test_assistant_upsert_adopt_takes_a_hand_made_assistant_over_and_marks_it(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory()
    client = openai_client(sim)
    mine = hand_made(client)
    backend = AssistantsBackend(client)

    ids = backend.prepare([SPEC.model_copy(update={"adopt": True})], Caller(Unlimited()), job="refund-bot")
    assert ids == {"support": mine.id}
    server = client.beta.assistants.retrieve(mine.id)
    assert (server.model, server.instructions) == (SPEC.model, SPEC.instructions)
    assert server.metadata is not None
    assert (server.metadata["created_by"], server.metadata["runner_job"]) == (
        "assistant-runner",
        "refund-bot",
    )
    # from now on it is the job's own: found and left alone without `adopt`
    sim.reset_stats()
    assert backend.prepare([SPEC], Caller(Unlimited()), job="refund-bot") == ids
    assert dict(sim.stats()["by_route"]) == {"GET /v1/assistants": 1}


def test_assistant_upsert_two_jobs_sharing_a_name_keep_their_own_assistant(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory()
    client = openai_client(sim)
    backend = AssistantsBackend(client)
    first = backend.prepare([SPEC], Caller(Unlimited()), job="job-a")["support"]
    other = SPEC.model_copy(update={"instructions": "Answer in French.", "model": "gpt-4.1-mini"})
    second = backend.prepare([other], Caller(Unlimited()), job="job-b")["support"]
    assert first != second
    again = backend.prepare(
        [other.model_copy(update={"instructions": "Answer in German."})], Caller(Unlimited()), job="job-b"
    )
    assert again["support"] == second

    a = client.beta.assistants.retrieve(first)
    assert (a.instructions, a.model) == (SPEC.instructions, SPEC.model)  # job-b never touched it
    assert client.beta.assistants.retrieve(second).instructions == "Answer in German."
    assert backend.prepare([SPEC], Caller(Unlimited()), job="job-a") == {"support": first}


def test_assistant_upsert_cli_run_exits_2_naming_the_assistant_and_enqueues_nothing(
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    openai_client: Callable[..., openai.OpenAI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = sim_factory(rules=RULES)
    mine = hand_made(openai_client(sim))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / ".runner"))
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    job = write_job(tmp_path, "assistants")
    sim.reset_stats()

    result = CliRunner().invoke(main, ["run", str(job), "--inline", "--no-progress", "-o", "out.jsonl"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: assistant 'Support Bot' ({mine.id}) already exists")
    assert "adopt: true" in result.stderr
    assert set(dict(sim.stats()["by_route"])) == {"GET /v1/assistants"}
    assert not (tmp_path / "out.jsonl").exists()

    data = yaml.safe_load(job.read_text())
    data["assistants"]["support"]["adopt"] = True
    job.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(main, ["run", str(job), "--inline", "--no-progress", "-o", "out.jsonl"])
    assert result.exit_code == 0, result.output
    assert mine.id in (tmp_path / "out.jsonl").read_text()


def test_assistant_upsert_claims_one_an_older_runner_created_without_a_job(
    sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    client = openai_client(sim_factory())
    old = client.beta.assistants.create(
        model="gpt-4o-mini", name=SPEC.name, metadata={"created_by": "assistant-runner"}
    )
    ids = AssistantsBackend(client).prepare([SPEC], Caller(Unlimited()), job="refund-bot")
    assert ids == {"support": old.id}
    server = client.beta.assistants.retrieve(old.id)
    assert server.metadata is not None and server.metadata["runner_job"] == "refund-bot"
    assert server.model == SPEC.model
