"""Tool outputs that depend on the call's arguments (`tool_outputs: {f: {by, outputs, default}}` and
`{python: file.py:fn}`), end to end against the simulator on every backend through the real SDK,
plus `runner validate`'s errors for them."""

# ruff: noqa: E501  (tables of cases and exact messages read best one per line)

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from click.testing import CliRunner
from conftest import missing_component

from runner.cli import main
from runner.engine.conversation import prepare_tasks, run_conversation
from runner.engine.limits import LocalLimiter
from runner.jobs import load_job
from runner.jobs.loader import expand
from runner.jobs.pychecks import forget
from runner.records import Record
from runner.run import RunOptions, run_job
from runner.settings import Settings
from runner.simulator import RunningSimulator
from runner.tasks import ConversationTask, ToolOutputRule

RULES = [
    {"when": r"order (\w+)", "call": "lookup_order", "arguments": {"order_id": "{{1}}"}, "then": "Order: {{tool_output}}"},
    {"when": r"qty (\d+)", "call": "lookup_order", "arguments": {"order_id": "A1", "qty": 2}, "then": "Qty: {{tool_output}}"},
    {"when": r"track (\w+)", "call": "track", "arguments": {"order_id": "{{1}}"}, "then": "Track: {{tool_output}}"},
]  # fmt: skip

ORDERS_PY = """
def lookup(arguments, ctx):
    if arguments["order_id"] == "ZZ":
        raise KeyError("no order ZZ")
    return {"order": arguments["order_id"], "turn": ctx["turn"], "user": ctx["user"], "tool": ctx["tool"],
            "vars": ctx["vars"]}

def text(arguments, ctx):
    return "plain " + arguments["order_id"]

def unjsonable(arguments, ctx):
    return {1, 2}

def one_arg(arguments):
    return "x"
"""


def tool(name: str) -> dict[str, Any]:
    props = {"order_id": {"type": "string"}, "qty": {"type": "integer"}}
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": props}}}


def write_job(folder: Path, tool_outputs: dict[str, Any], turns: list[str], api: str = "chat") -> Path:
    (folder / "tools").mkdir(exist_ok=True)
    (folder / "tools" / "orders.py").write_text(ORDERS_PY, encoding="utf-8")
    job = {
        "name": "tools",
        "api": api,
        "model": "gpt-4o-mini",
        "assistants": {"support": {"name": "Tool Bot", "instructions": "You help.", "tools": [tool("lookup_order"), tool("track")]}},
        "conversations": [{"id": "c", "vars": {"shop": "north"}, "tool_outputs": tool_outputs, "turns": [{"user": t} for t in turns]}],
    }  # fmt: skip
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _fresh_functions() -> None:
    forget()


@pytest.fixture
def sim(sim_factory: Callable[..., RunningSimulator]) -> RunningSimulator:
    return sim_factory(rules={"rules": RULES})


def run(path: Path, sim: RunningSimulator, client: openai.OpenAI) -> Record:
    job = load_job(path)
    config = Settings(api_key="sk-test", base_url=sim.base_url)
    (task,) = prepare_tasks(job, expand(job), LocalLimiter(), client=client, settings=config)
    task = ConversationTask.model_validate(task.model_dump(mode="json"))  # as it crosses Redis
    return run_conversation(task, batch_id="b", limiter=LocalLimiter(), client=client, settings=config)


BY_ORDER = {
    "by": "order_id",
    "outputs": {"A1": "shipped", "B2": {"status": "lost"}},
}


@pytest.mark.parametrize("api", ["chat", "responses", "assistants"])
def test_tool_outputs_by_argument_value_on_every_backend(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI], api: str
) -> None:
    path = write_job(
        tmp_path,
        {"lookup_order": BY_ORDER, "track": {"by": "order_id", "outputs": {"A1": "at the depot"}, "default": "in transit"}},
        ["order A1", "order B2", "order C3", "track Q9", "track A1"],
        api=api,
    )
    record = run(path, sim, openai_client(sim))
    assert record["status"] == "completed", record["error"]
    replies = [t["assistant"] for t in record["turns"]]
    assert replies == [
        "Order: shipped",
        'Order: {"status": "lost"}',
        'Order: {"error": "no output for order_id=\'C3\'"}',  # no match, no default: the model is told
        "Track: in transit",
        "Track: at the depot",
    ]
    calls = [c for t in record["turns"] for c in t["tool_calls"]]
    assert [c["arguments"] for c in calls][:3] == [{"order_id": "A1"}, {"order_id": "B2"}, {"order_id": "C3"}]
    assert json.loads(calls[2]["output"]) == {"error": "no output for order_id='C3'"}  # the record shows it


def test_tool_outputs_non_string_argument_values_compare_as_json_text(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    path = write_job(tmp_path, {"lookup_order": {"by": "qty", "outputs": {2: "two", 3: "three"}}}, ["qty 2"])
    record = run(path, sim, openai_client(sim))
    assert record["turns"][0]["assistant"] == "Qty: two"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_tool_outputs_python_function_gets_arguments_and_ctx(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI], api: str
) -> None:
    path = write_job(
        tmp_path,
        {"lookup_order": {"python": "tools/orders.py:text"}, "track": {"python": "tools/orders.py:lookup"}},
        ["order B7", "track A1"],
        api=api,
    )
    record = run(path, sim, openai_client(sim))
    assert record["status"] == "completed", record["error"]
    assert record["turns"][0]["assistant"] == "Order: plain B7"  # a string goes as it is
    out = json.loads(record["turns"][1]["tool_calls"][0]["output"])  # anything else as JSON
    assert out == {"order": "A1", "turn": 1, "user": "track A1", "tool": "track", "vars": {"shop": "north"}}


@pytest.mark.parametrize(
    ("function", "error"),
    [
        ("lookup", "turn 2: tool 'track': python tool output tools/orders.py:lookup raised KeyError: 'no order ZZ'"),
        ("unjsonable", "turn 2: tool 'track': python tool output tools/orders.py:unjsonable returned set: Object of type set is not JSON serializable"),
    ],
)
def test_tool_outputs_python_failure_is_the_turns_error_not_the_workers(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI], function: str, error: str
) -> None:
    path = write_job(tmp_path, {"track": {"python": f"tools/orders.py:{function}"}}, ["hello", "track ZZ", "after"])
    record = run(path, sim, openai_client(sim))  # returns: nothing raised out of the conversation
    assert (record["status"], record["error"]) == ("error", error)
    first, second = record["turns"]  # the conversation stops at the failed turn
    assert first["assistant"] == "You said: hello"
    assert second["tool_calls"] == [{"name": "track", "arguments": {"order_id": "ZZ"}, "output": None}]


def test_tool_outputs_python_file_changed_after_load_is_refused(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    path = write_job(tmp_path, {"track": {"python": "tools/orders.py:text"}}, ["track A1"])
    (task,) = expand(load_job(path))
    rule = task.tool_outputs["track"]
    assert isinstance(rule, ToolOutputRule) and rule.python is not None and rule.python["path"] == "tools/orders.py"
    forget()
    (tmp_path / "tools" / "orders.py").write_text(ORDERS_PY + "\n# changed\n", encoding="utf-8")
    config = Settings(api_key="sk-test", base_url=sim.base_url)
    record = run_conversation(task, batch_id="b", limiter=LocalLimiter(), client=openai_client(sim), settings=config)
    assert record["status"] == "error"
    assert "python tool output refused: tools/orders.py:text:" in record["error"]
    assert "changed since the job was loaded (content hash differs)" in record["error"]


def test_tool_outputs_python_module_needs_the_workers_allow_list(
    tmp_path: Path,
    sim: RunningSimulator,
    openai_client: Callable[..., openai.OpenAI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "runner_demo_tools.py").write_text("def lookup(arguments, ctx):\n    return 'from module'\n", encoding="utf-8")
    (tmp_path / "job").mkdir()
    path = write_job(tmp_path / "job", {"track": {"python": "runner_demo_tools:lookup"}}, ["track A1"])
    monkeypatch.syspath_prepend(str(site))
    try:
        denied = run(path, sim, openai_client(sim))
        monkeypatch.setenv("RUNNER_CHECK_PACKAGES", "runner_demo_tools")
        allowed = run(path, sim, openai_client(sim))
    finally:
        sys.modules.pop("runner_demo_tools", None)
    assert denied["status"] == "error"
    assert "package 'runner_demo_tools' is not in this worker's RUNNER_CHECK_PACKAGES" in denied["error"]
    assert allowed["turns"][0]["assistant"] == "Track: from module"


BAD = [
    ("by-without-outputs", {"by": "order_id"}, "tool_outputs.track: `by` needs `outputs` (the output for each value of the argument), or use `python:`"),
    ("outputs-without-by", {"outputs": {"A1": "x"}}, "tool_outputs.track.by: `outputs` needs `by`: the argument whose value picks the output"),
    ("typo", {"by": "order_id", "ouputs": {"A1": "x"}}, "tool_outputs.track.ouputs: unknown key; an output by arguments takes `by`, `outputs`, `default`"),
    ("python-and-by", {"python": "tools/orders.py:text", "by": "order_id"}, "tool_outputs.track.python: a python tool output takes no `by`: the function gets all the arguments"),
    ("missing-file", {"python": "tools/none.py:f"}, "tool_outputs.track.python: file not found: "),
    ("missing-function", {"python": "tools/orders.py:nope"}, "tool_outputs.track.python: tools/orders.py:nope: no function 'nope' in "),
    ("wrong-signature", {"python": "tools/orders.py:one_arg"}, "tool_outputs.track.python: tools/orders.py:one_arg: one_arg must take two arguments, fn(arguments, ctx)"),
    ("outside-folder", {"python": "../x.py:f"}, "tool_outputs.track.python: ../x.py is outside the job file's folder"),
    ("unknown-argument", {"by": "order_idd", "outputs": {"A1": "x"}}, "tool_outputs.track.by: function 'track' of assistant 'support' has no parameter 'order_idd' (did you mean 'order_id'?); it has: order_id, qty"),
    ("no-such-module", {"python": "no_such_module_xyz:f"}, "tool_outputs.track.python: no Python module 'no_such_module_xyz'"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_tool_outputs_validate_errors(tmp_path: Path, value: dict[str, Any], message: str) -> None:
    path = write_job(tmp_path, {"track": value}, ["track A1"])
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    at, _, rest = line.removeprefix(f"{path}:").partition(": ")
    assert rest.startswith(f"conversations[0].{message}"), line
    key = message.split(":")[0].split(".")[-1]
    shown = path.read_text().splitlines()[int(at) - 1]
    assert shown.strip().startswith((f"{key}:", "track:")), shown  # the tool's line, or its bad key's
    assert "Traceback" not in result.output


def test_tool_outputs_plain_forms_unchanged_and_schema_describes_the_rules(tmp_path: Path) -> None:
    path = write_job(tmp_path, {"lookup_order": "shipped", "track": {"status": "late", "eta": 2}}, ["hi"])
    (task,) = expand(load_job(path))
    assert task.tool_outputs == {"lookup_order": "shipped", "track": '{"status": "late", "eta": 2}'}
    schema = json.loads(CliRunner().invoke(main, ["schema"]).stdout)
    value = schema["$defs"]["Conversation"]["properties"]["tool_outputs"]["additionalProperties"]
    forms = [set(o.get("properties", {})) for o in value["anyOf"]]
    assert {"by", "outputs", "default"} in forms and {"python"} in forms


def test_tool_outputs_by_arguments_through_the_batch_api(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = sim_factory(rules={"rules": RULES}, batch_latency_s=0.2)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = write_job(
        tmp_path,
        {"lookup_order": BY_ORDER, "track": {"python": "tools/orders.py:lookup"}},
        ["order C3", "track A1"],
    )
    options = RunOptions(output=str(tmp_path / "out.jsonl"), progress=False, batch_api=True)
    (record,) = run_job(str(path), options, Settings.from_env()).records
    assert record["status"] == "completed", record["error"]
    assert {t["via"] for t in record["turns"]} == {"batch"}
    assert record["turns"][0]["assistant"] == 'Order: {"error": "no output for order_id=\'C3\'"}'
    out = json.loads(record["turns"][1]["tool_calls"][0]["output"])
    assert out == {"order": "A1", "turn": 1, "user": "track A1", "tool": "track", "vars": {"shop": "north"}}


def test_tool_outputs_python_failure_leaves_the_worker_process_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("redis-server") is None:
        missing_component("redis-server (the queue's embedded Redis)")
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = write_job(tmp_path, {"track": {"python": "tools/orders.py:lookup"}}, ["track ZZ", "track A1"])
    job = yaml.safe_load(path.read_text())
    job["repeat"] = 3
    job["simulator"] = {"latency_s": 0.05, "rules": RULES}
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["run", str(path), "--simulate", "-o", str(out), "--workers", "1", "--no-progress"])
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # One worker carried all three: the first conversation's failing tool output did not stop it.
    assert sorted(r["conversation_id"] for r in records) == [f"tools/c#r{i}" for i in range(3)]
    for r in records:
        assert r["status"] == "error" and r["attempts"] == 1
        assert r["error"] == "turn 1: tool 'track': python tool output tools/orders.py:lookup raised KeyError: 'no order ZZ'"
