"""The simulator checks its own answers against OpenAI's response schemas when asked
(`validate_responses`, `RUNNER_SIMULATOR_VALIDATE=1`) and reports violations in its stats; and
faults can strike after a request was processed: the object exists, the answer is lost."""

from __future__ import annotations

import json
import os
from unittest import mock

import httpx2
import openai
import pytest

from runner.simulator import SimulatorConfig
from runner.simulator.config import VALIDATE_ENV

HELLO = [{"role": "user", "content": "hello"}]
TOOLS = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
]
RULES = {
    "rules": [
        {"when": "order", "call": "lookup", "arguments": {"id": "A1"}, "then": "It is {{tool_output}}."}
    ]
}


def test_simulator_strict_validate_env_var_switches_the_audit_on():
    with mock.patch.dict(os.environ, {VALIDATE_ENV: "1"}):
        assert SimulatorConfig().validate_responses is True
    with mock.patch.dict(os.environ, {VALIDATE_ENV: "0"}):
        assert SimulatorConfig().validate_responses is False


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_strict_audit_finds_no_violation_in_real_traffic(sim_factory, openai_client):
    sim = sim_factory(rules=RULES, validate_responses=True)
    client = openai_client(sim)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, n=2, logprobs=True, top_logprobs=1)
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True):
        pass
    client.responses.create(model="gpt-4o-mini", input="hi", include=["message.output_text.logprobs"])
    bg = client.responses.create(model="gpt-4o-mini", input="hi", background=True)
    for _ in client.responses.retrieve(bg.id, stream=True, starting_after=0):
        pass
    client.models.list()
    a = client.beta.assistants.create(model="gpt-4o-mini", tools=TOOLS)
    with client.beta.threads.create_and_run_stream(
        assistant_id=a.id, thread={"messages": [{"role": "user", "content": "my order"}]}
    ) as stream:
        stream.until_done()
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    stats = sim.stats()
    assert stats["schema_violations"] == 0, stats["schema_violation_samples"]
    assert stats["invalid_requests"] == 0


async def _events(*chunks: bytes):
    for c in chunks:
        yield c


async def _drain(stream) -> list[bytes]:
    return [c async for c in stream]


def test_simulator_strict_audit_reports_a_bad_answer(sim_factory):
    simulator = sim_factory(audit_clean=False)  # this test feeds it bad answers on purpose
    audit = simulator.simulator.audit
    audit.check("RunObject", {"id": 1, "object": "thread.run"}, "injected")
    audit.check_answer("GET", "/threads/{thread_id}/runs/{run_id}", 200, b'{"status": "sleeping"}')
    audit.check_answer("POST", "/chat/completions", 400, json.dumps({"error": {"message": "x"}}).encode())
    import asyncio

    bad_chunk = b'data: {"object": "chat.completion.chunk", "choices": "none"}\n\n'
    asyncio.run(
        _drain(audit.checked_stream("POST", "/chat/completions", _events(bad_chunk, b"data: [DONE]\n\n")))
    )
    stats = httpx2.get(simulator.url + "/_simulator/stats").json()
    assert stats["schema_violations"] >= 4
    samples = stats["schema_violation_samples"]
    assert samples[0].startswith("injected: RunObject at /")
    assert any(s.startswith("GET /threads/{thread_id}/runs/{run_id} 200: RunObject") for s in samples)
    assert any(s.startswith("POST /chat/completions 400: ErrorResponse at /error") for s in samples)
    assert any("stream event data: CreateChatCompletionStreamResponse" in s for s in samples)


def test_simulator_strict_faults_after_processing_create_and_lose_the_answer(sim_factory):
    sim = sim_factory(fault_rate=0.6, fault_after_share=1.0, seed=4)
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    lost = 0
    for i in range(10):
        try:
            client.conversations.create(metadata={"n": str(i)})
        except (openai.APIConnectionError, openai.InternalServerError):
            lost += 1
    assert 0 < lost < 10
    stats = sim.stats()
    assert stats["faults_after_processing"] == stats["faults"] == lost
    # every create was processed, whether its answer arrived or not
    assert sorted(c.metadata["n"] for c in sim.simulator.conversations.values()) == sorted(
        str(i) for i in range(10)
    )
    client.close()


def test_simulator_strict_faults_after_processing_cut_streams(sim_factory):
    sim = sim_factory(fault_rate=1.0, fault_after_share=1.0, seed=2, latency_s=0.05)
    client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    seen = []
    with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c d e f g h"}], stream=True
        ):
            seen.append(chunk)
    assert 1 <= len(seen) <= 4
    assert sim.stats()["streams_cut"] == 1
    client.close()


def test_simulator_strict_after_faults_are_reproducible_for_a_seed(sim_factory):
    def outcomes(seed: int) -> list[str]:
        sim = sim_factory(fault_rate=0.5, fault_after_share=0.5, seed=seed, latency_s=0)
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        out = []
        for _ in range(16):
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
                out.append("ok")
            except openai.APIConnectionError:
                out.append("dropped")
            except openai.InternalServerError as e:
                out.append(str(e.status_code))
        out.append(str(sim.stats()["faults_after_processing"]))
        client.close()
        return out

    first = outcomes(9)
    assert first == outcomes(9) and int(first[-1]) > 0
