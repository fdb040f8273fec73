"""Starting and stopping the simulator (in-process and as `runner simulate`), its configuration,
rules files, determinism for a seed, and the CLI's exit codes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import openai
import psutil
import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.errors import SimulatorError, UsageError
from runner.simulator import SimulatorConfig, SimulatorRules, load_rules, start_simulator

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def _listening_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def test_simulator_start_and_stop_leave_no_threads_or_sockets():
    threads_before = set(threading.enumerate())
    with start_simulator(SimulatorConfig(latency_s=0.01)) as sim:
        assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1"
        assert sim.port in _listening_ports()
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        assert client.chat.completions.create(**CHAT).choices[0].message.content == "You said: hello"
        stream = client.chat.completions.create(**CHAT, stream=True)  # left open on purpose
        next(iter(stream))
    assert sim.port not in _listening_ports()
    assert set(threading.enumerate()) == threads_before
    with socket.create_server(("127.0.0.1", sim.port)):  # the port is free again
        pass
    sim.stop()  # idempotent
    client.close()


def test_simulator_port_in_use_raises_simulator_error():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(
            SimulatorError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: Address already in use$"
        ):
            start_simulator(port=port)


def test_simulator_config_rejects_bad_values():
    with pytest.raises(
        UsageError,
        match=r"^invalid simulator configuration: rpm must be >= 1; fault_rate must be between 0 and 1$",
    ):
        SimulatorConfig(fault_rate=1.5, rpm=0)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_simulator_replies_and_ids_are_deterministic_for_a_seed(sim_factory):
    def session(seed: int) -> list[str]:
        sim = sim_factory(seed=seed)
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        out = [
            client.chat.completions.create(**CHAT).id,
            client.responses.create(model="gpt-4o-mini", input="x").id,
        ]
        out.append(client.responses.create(model="gpt-4o-mini", input="hi").output_text)
        a = client.beta.assistants.create(model="gpt-4o-mini")
        run = client.beta.threads.create_and_run_poll(
            assistant_id=a.id, thread={"messages": [{"role": "user", "content": "hi"}]}
        )
        for m in client.beta.threads.messages.list(run.thread_id):
            out += [m.id, m.content[0].text.value]
        out += [s.id for s in client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id)]
        client.close()
        return out

    first = session(5)
    assert first == session(5)
    assert len(first) == 8 and first[:2] != session(6)[:2]


def test_simulator_unknown_route_is_404_invalid_url(simulator, validate_against):
    r = httpx2.get(f"{simulator.base_url}/fine_tuning/jobs", headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (GET /v1/fine_tuning/jobs)"
    validate_against("ErrorResponse", r.json())
    r = httpx2.put(f"{simulator.base_url}/chat/completions", headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 404


RULES_YAML = """\
latency_s: 0.01
rules:
  - when: '(?i)refund'
    reply: Refunds take {{message}} days.
default: 'Echo: {{message}}'
"""
JOB_YAML = """\
name: demo
assistants: {bot: {instructions: Help.}}
conversations: [{id: c1, turns: [{user: hi}]}]
simulator:
  rules:
    - when: order
      call: lookup_order
      then: 'Order: {{tool_output}}'
"""


def test_simulator_rules_load_from_rules_or_job_files(tmp_path):
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES_YAML)
    rules = load_rules(rules_file)
    assert rules.latency_s == 0.01 and rules.default == "Echo: {{message}}" and rules.rules[0].reply
    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB_YAML)
    job_rules = load_rules(job_file)
    assert job_rules.rules[0].call == "lookup_order" and job_rules.default == SimulatorRules().default
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - when: '('\n    reply: x\n")
    with pytest.raises(UsageError, match=r"bad.yaml: invalid rules: rules.0.when: .*invalid regex"):
        load_rules(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault-rate", "2"], "Invalid value for '--fault-rate'"),
        (["--rpm", "0"], "Invalid value for '--rpm'"),
        (["--latency", "-1"], "Invalid value for '--latency'"),
        (["--port", "70000"], "Invalid value for '--port'"),
        (["--rules", "missing.yaml"], "Invalid value for '--rules'"),
    ],
)
def test_simulator_cli_bad_values_exit_2(args, message):
    result = CliRunner().invoke(main, ["simulate", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_simulator_cli_invalid_rules_file_exit_2(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [{when: x}]\n")
    result = CliRunner().invoke(main, ["simulate", "--rules", str(bad)])
    assert result.exit_code == 2
    assert "a rule needs exactly one of reply, call, fail, quota_exhausted" in result.output


def test_simulator_cli_port_in_use_exit_3():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["simulate", "--port", str(port)])
    assert result.exit_code == 3
    assert result.output == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_simulator_cli_serves_until_sigint(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "runner",
        "simulate",
        "--port",
        "0",
        "--rules",
        str(rules),
        "--verbose",
        "--seed",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()
        m = re.fullmatch(r"Simulator listening on (http://127\.0\.0\.1:\d+/v1)\n", first)
        assert m, first
        base_url = m.group(1)
        assert proc.stdout.readline() == f"  export OPENAI_BASE_URL={base_url}\n"
        client = openai.OpenAI(base_url=base_url, api_key="sk-secret-key-123", max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "refund 30"}]
        )
        assert reply.choices[0].message.content == "Refunds take refund 30 days."
        client.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.endswith("Simulator stopped.\n")
    assert re.search(r"POST /v1/chat/completions 200 \d+\.\dms", err), err
    assert "sk-secret" not in err + out and "Bearer" not in err + out


def test_simulator_rules_file_example_is_valid():
    example = Path(__file__).resolve().parents[1] / "jobs"
    for path in sorted(example.glob("*.y*ml")):
        text = path.read_text()
        if "simulator:" in text:
            load_rules(path)  # every sample job's simulator block is usable with --rules
