"""Expansion of a job file into conversation tasks: counts, ids, rendering, resolution, stability."""

# ruff: noqa: E501  (exact messages and YAML snippets read best one per line)

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner.errors import JobFileError
from runner.jobs import Job, assistant_specs, expand, load_job, render_output
from runner.tasks import Api, ConversationTask, Limits

CONTRACT_JOB = """\
name: refund-bot
api: assistants
model: gpt-4o-mini
assistants:
  support:
    name: Support Bot
    instructions: You help customers with refunds.
    model: gpt-4o-mini
    temperature: 0.2
    tools:
      - type: function
        function:
          name: lookup_order
          description: Look an order up
          parameters: {type: object, properties: {order_id: {type: string}}, required: [order_id]}
conversations:
  - id: refund-basic
    assistant: support
    vars: {product: laptop}
    tool_outputs:
      lookup_order: '{"status": "shipped"}'
    turns:
      - user: I want a refund for my {{product}}
        expect:
          - contains: refund
          - not_contains: sorry
          - regex: '\\d+ days'
          - max_latency_ms: 20000
      - user: Thanks!
matrix:
  model: [gpt-4o-mini, gpt-4.1-mini]
repeat: 1
limits:
  requests_per_minute: 500
  tokens_per_minute: 150000
  concurrency: 8
  run_timeout_s: 120
  max_attempts: 4
output: runs/{name}/{batch}.jsonl
schedule: "0 6 * * *"
simulator:
  latency_s: 0.2
  rules:
    - when: '(?i)refund'
      reply: Refunds are accepted within 30 days.
    - when: '(?i)order'
      call: lookup_order
      arguments: {order_id: "A1"}
      then: 'Your order is {{tool_output}}.'
  default: 'You said: {{message}}'
"""

GRID_JOB = """\
name: grid
model: base-model
assistants:
  bot: {instructions: hi, temperature: 0.5}
conversations:
  - id: plain
    vars: {greeting: hello, tone: ignored}
    turns:
      - user: '{{greeting}} in a {{tone}} way'
  - id: rows
    dataset: data/rows.jsonl
    vars: {city: Paris}
    turns:
      - user: Ticket {{ticket}} from {{city}}
        expect:
          - contains: '{{answer}}'
          - json_schema: {type: object, properties: {t: {enum: ['{{ticket}}', '{{tone}}']}}}
          - max_tokens: 50
      - user: bye
        expect:
          - equals: bye
matrix:
  tone: [formal, casual]
  model: [m1, m2]
repeat: 2
"""

ROWS = [
    {"id": "a1", "ticket": "T1", "answer": "yes"},
    {"ticket": "T2", "answer": "no", "city": "Oslo"},
    {"id": 7, "ticket": "T3", "answer": "maybe"},
]


def write_job(folder: Path, text: str, name: str = "job.yaml", **files: str) -> Path:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    rows = "".join(json.dumps(r) + "\n" for r in ROWS)
    return write_job(tmp_path, GRID_JOB, **{"data/rows.jsonl": rows})


def test_jobfile_expand_contract_example_ids(tmp_path: Path) -> None:
    tasks = expand(load_job(write_job(tmp_path, CONTRACT_JOB)))
    assert [t.conversation_id for t in tasks] == [  # matrix values keep their listed order
        "refund-bot/refund-basic#model=gpt-4o-mini#r0",
        "refund-bot/refund-basic#model=gpt-4.1-mini#r0",
    ]
    task = tasks[0]
    assert task.job == "refund-bot" and task.api is Api.ASSISTANTS and task.model == "gpt-4o-mini"
    assert task.vars == {"product": "laptop"} and task.matrix == {"model": "gpt-4o-mini"}
    assert task.turns[0].user == "I want a refund for my laptop"
    assert [(c.type, c.value) for c in task.turns[0].expect] == [
        ("contains", "refund"),
        ("not_contains", "sorry"),
        ("regex", r"\d+ days"),
        ("max_latency_ms", 20000),
    ]
    assert task.turns[1].expect == ()
    assert task.tool_outputs == {"lookup_order": '{"status": "shipped"}'}
    assert task.limits == Limits(requests_per_minute=500, tokens_per_minute=150000, concurrency=8)
    assert task.assistant.name == "Support Bot" and task.assistant.temperature == 0.2
    assert task.assistant.tools[0]["function"]["name"] == "lookup_order"
    assert tasks[1].model == tasks[1].assistant.model == "gpt-4.1-mini"


def test_jobfile_expand_without_matrix_or_dataset(tmp_path: Path) -> None:
    text = "name: j\nmodel: m\nassistants: {a: {}}\nconversations:\n  - id: c\n    turns: [{user: hi}]\nrepeat: 3\n"
    tasks = expand(load_job(write_job(tmp_path, text)))
    assert [t.conversation_id for t in tasks] == ["j/c#r0", "j/c#r1", "j/c#r2"]
    assert [t.repeat_index for t in tasks] == [0, 1, 2]
    assert tasks[0].assistant.name == "a" and tasks[0].limits == Limits()
    assert tasks[0].matrix == {} and tasks[0].vars == {}


def test_jobfile_expand_counts_vars_dataset_matrix_repeat(grid: Path) -> None:
    tasks = expand(load_job(grid))
    # plain: 1 x 4 combinations x 2 repeats; rows: 3 rows x 4 x 2
    assert len(tasks) == 8 + 24
    ids = [t.conversation_id for t in tasks]
    assert len(set(ids)) == len(ids)
    assert ids[:8] == [
        "grid/plain#model=m1#tone=formal#r0",
        "grid/plain#model=m1#tone=formal#r1",
        "grid/plain#model=m1#tone=casual#r0",
        "grid/plain#model=m1#tone=casual#r1",
        "grid/plain#model=m2#tone=formal#r0",
        "grid/plain#model=m2#tone=formal#r1",
        "grid/plain#model=m2#tone=casual#r0",
        "grid/plain#model=m2#tone=casual#r1",
    ]
    assert ids[8] == "grid/rows/a1#model=m1#tone=formal#r0"
    assert ids[16] == "grid/rows/2#model=m1#tone=formal#r0"  # no id column: the 1-based row number
    assert ids[-1] == "grid/rows/7#model=m2#tone=casual#r1"


def test_jobfile_expand_renders_turns_and_check_values(grid: Path) -> None:
    tasks = {t.conversation_id: t for t in expand(load_job(grid))}
    plain = tasks["grid/plain#model=m1#tone=casual#r0"]
    assert plain.turns[0].user == "hello in a casual way"  # the matrix var wins over `vars`
    assert plain.vars == {"greeting": "hello", "tone": "casual"}
    row2 = tasks["grid/rows/2#model=m2#tone=formal#r1"]
    assert row2.turns[0].user == "Ticket T2 from Oslo"  # the row wins over `vars`
    assert row2.turns[0].expect[0].value == "no"
    assert row2.turns[0].expect[1].value == {
        "type": "object",
        "properties": {"t": {"enum": ["T2", "formal"]}},
    }
    assert row2.turns[0].expect[2].value == 50
    assert row2.turns[1].user == "bye" and row2.turns[1].expect[0].value == "bye"
    assert row2.vars == {"city": "Oslo", "ticket": "T2", "answer": "no", "tone": "formal"}
    assert row2.matrix == {"model": "m2", "tone": "formal"} and row2.repeat_index == 1
    assert tasks["grid/rows/a1#model=m1#tone=formal#r0"].turns[0].user == "Ticket T1 from Paris"


def test_jobfile_expand_resolves_model_temperature_and_api(tmp_path: Path) -> None:
    text = """\
    name: res
    model: job-model
    api: chat
    assistants:
      own: {model: own-model, temperature: 0.1, name: Own}
      inherit: {}
    conversations:
      - {id: a, assistant: own, turns: [{user: hi}]}
      - {id: b, assistant: inherit, turns: [{user: hi}]}
    """
    tasks = expand(load_job(write_job(tmp_path, text)))
    assert [(t.model, t.api, t.assistant.name, t.assistant.temperature) for t in tasks] == [
        ("own-model", Api.CHAT, "Own", 0.1),
        ("job-model", Api.CHAT, "inherit", None),
    ]
    matrix = textwrap.dedent(text) + "matrix:\n  temperature: [0, 1.5]\n  api: [responses]\n  model: [mx]\n"
    tasks = expand(load_job(write_job(tmp_path, matrix)))
    assert tasks[0].conversation_id == "res/a#api=responses#model=mx#temperature=0#r0"
    assert [(t.model, t.api, t.assistant.temperature) for t in tasks[:2]] == [
        ("mx", Api.RESPONSES, 0),
        ("mx", Api.RESPONSES, 1.5),
    ]
    specs = assistant_specs(load_job(write_job(tmp_path, matrix)))
    assert [(s.key, s.model, s.temperature) for s in specs] == [
        ("own", "mx", 0),
        ("own", "mx", 1.5),
        ("inherit", "mx", 0),
        ("inherit", "mx", 1.5),
    ]


def test_jobfile_expand_csv_and_yaml_datasets(tmp_path: Path) -> None:
    text = """\
    name: ds
    model: m
    assistants: {a: {}}
    conversations:
      - {id: csv, dataset: rows.csv, turns: [{user: '{{q}}', expect: [{contains: '{{a}}'}]}]}
      - {id: yml, dataset: sub/rows.yml, turns: [{user: 'n={{n}}'}]}
    """
    job = write_job(
        tmp_path,
        text,
        **{
            "rows.csv": 'id,q,a\nx,"Hello, ""you""",hi\ny,"two\nlines",ok\n',
            "sub/rows.yml": "- {n: 1}\n- {n: 2.5, id: z}\n",
        },
    )
    tasks = expand(load_job(job))
    assert [t.conversation_id for t in tasks] == ["ds/csv/x#r0", "ds/csv/y#r0", "ds/yml/1#r0", "ds/yml/z#r0"]
    assert tasks[0].turns[0].user == 'Hello, "you"' and tasks[0].turns[0].expect[0].value == "hi"
    assert tasks[1].turns[0].user == "two\nlines"
    assert [t.turns[0].user for t in tasks[2:]] == ["n=1", "n=2.5"]


def test_jobfile_expand_tool_outputs_as_data_become_json(tmp_path: Path) -> None:
    text = """\
    name: tools
    model: m
    assistants:
      a:
        tools: [{type: function, function: {name: f}}, {type: code_interpreter}]
    conversations:
      - id: c
        tool_outputs: {f: {status: shipped, items: [1, 2]}}
        turns: [{user: hi}]
    """
    (task,) = expand(load_job(write_job(tmp_path, text)))
    assert json.loads(task.tool_outputs["f"]) == {"status": "shipped", "items": [1, 2]}
    assert task.assistant.tools == (
        {"type": "function", "function": {"name": "f"}},
        {"type": "code_interpreter"},
    )


def test_jobfile_expand_tasks_survive_json_round_trip(grid: Path) -> None:
    for task in expand(load_job(grid)):
        data = json.loads(json.dumps(task.model_dump(mode="json")))
        assert ConversationTask.model_validate(data) == task


def test_jobfile_expand_ids_stable_across_loads_and_processes(grid: Path) -> None:
    first = [t.conversation_id for t in expand(load_job(grid))]
    assert first == [t.conversation_id for t in expand(load_job(grid))]
    code = "import sys; from runner.jobs import expand, load_job; print('\\n'.join(t.conversation_id for t in expand(load_job(sys.argv[1]))))"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(grid)], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.splitlines() == first


def test_jobfile_expand_python_built_job(tmp_path: Path) -> None:
    job = Job.model_validate(
        {
            "name": "py",
            "model": "m",
            "assistants": {"a": {}},
            "conversations": [{"id": "c", "turns": [{"user": "x"}]}],
        }
    )
    assert [t.conversation_id for t in expand(job)] == ["py/c#r0"]
    assert job.limits.concurrency is None and job.limits.run_timeout_s == 120 and job.limits.max_attempts == 4
    assert job.output == "runs/{name}/{batch}.jsonl" and job.api is Api.ASSISTANTS and job.repeat == 1
    broken = Job.model_validate({**job.model_dump(exclude_unset=True), "model": None})
    with pytest.raises(JobFileError, match="no model"):
        expand(broken)


def test_jobfile_digest_and_source(grid: Path) -> None:
    job = load_job(grid)
    assert job.source == grid
    assert len(job.digest) == 64 and job.digest == load_job(grid).digest
    (grid.parent / "data/rows.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert load_job(grid).digest != job.digest


def test_jobfile_render_output() -> None:
    now = datetime(2026, 11, 26, 23, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    path = render_output("runs/{name}/{date}-{time}-{batch}.jsonl", name="j", batch="b1", now=now)
    assert path == Path("runs/j/2026-11-26-213005-b1.jsonl")
    naive = render_output("{date}/{time}", name="j", batch="b", now=datetime(2026, 1, 2, 3, 4, 5))
    assert naive == Path("2026-01-02/030405")
    assert render_output("runs/{name}/{batch}.jsonl", name="j", batch="b", now=datetime.now(UTC)) == Path(
        "runs/j/b.jsonl"
    )
