"""Loading job files: safe YAML, line numbers, every problem at once, limits, warnings."""

# ruff: noqa: E501  (exact messages and YAML snippets read best one per line)

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runner.errors import JobFileError
from runner.jobs import expand, load_job
from runner.jobs.yamlload import MAX_YAML_BYTES, YAMLProblems, load_yaml

MANY_PROBLEMS = """\
name: multi
model: m
assistants:
  a:
    instructions: hi
    modle: x
  b:
    instructions: hello
conversations:
  - id: c1
    assistant: a
    dataset: rows.jsonl
    turns:
      - user: hi {{who}}
        expect:
          - regex: '('
  - id: c2
    assistant: zz
    turns:
      - user: "{{nope}}"
  - id: c2
    assistant: b
    turns: [{user: x}]
schedule: bad cron
"""


def test_jobfile_load_reports_every_problem_of_file_and_dataset(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(MANY_PROBLEMS)
    (tmp_path / "rows.jsonl").write_text('{"who": "x"}\n{"who": \n')
    with pytest.raises(JobFileError) as info:
        load_job(tmp_path / "job.yaml")
    job, rows = tmp_path / "job.yaml", tmp_path / "rows.jsonl"
    assert [str(p) for p in info.value.problems] == [
        f"{job}:6: assistants.a: unknown key 'modle' (did you mean 'model'?); valid keys: adopt, extra_body, id, "
        "instructions, max_output_tokens, model, name, parallel_tool_calls, reasoning_effort, response_format, "
        "seed, stop, temperature, tool_choice, tools, top_p",
        f"{job}:16: conversations[0].turns[0].expect[0]: invalid regex '(': missing ), unterminated subpattern "
        "at position 0",
        f"{job}:18: conversations[1].assistant: unknown assistant 'zz'; defined: a, b",
        f"{job}:20: conversations[1].turns[0].user: {{{{nope}}}} is not defined (define it in `vars`, a dataset "
        "column or a matrix key)",
        f"{job}:21: conversations[2].id: duplicate conversation id 'c2' (first at line 17)",
        f"{job}:24: schedule: cron 'bad cron' has 2 fields; use 5 (minute hour day month weekday) or 6 "
        "(seconds first)",
        f"{rows}:2: row 2: invalid JSON: Expecting value (column 9)",
    ]
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)


def test_jobfile_load_yaml_12_scalars(tmp_path: Path) -> None:
    data, _ = load_yaml(
        "a: yes\nb: on\nc: 2024-01-02\nd: 1:30\ne: 0o17\nf: 0x1f\ng: .inf\nh: ~\ni: True\nj: 012\n", "x"
    )
    assert data == {
        "a": "yes",
        "b": "on",
        "c": "2024-01-02",
        "d": "1:30",
        "e": 15,
        "f": 31,
        "g": float("inf"),
        "h": None,
        "i": True,
        "j": 12,
    }


def test_jobfile_load_merge_keys_and_small_aliases(tmp_path: Path) -> None:
    text = """\
name: merged
model: m
assistants: {a: {}}
x-checks: &checks
  - contains: ok
conversations:
  - &base
    id: one
    turns: [{user: hi, expect: *checks}]
  - <<: *base
    id: two
"""
    (tmp_path / "job.yaml").write_text(text)
    with pytest.raises(JobFileError, match=r"job.yaml:4: unknown key 'x-checks'"):
        load_job(tmp_path / "job.yaml")
    data, loc = load_yaml(text, "job.yaml")
    assert data["conversations"][1] == {
        "id": "two",
        "turns": [{"user": "hi", "expect": [{"contains": "ok"}]}],
    }
    assert loc.line(("conversations", 1, "id")) == 11
    (tmp_path / "job.yaml").write_text(
        text.replace("x-checks: &checks\n  - contains: ok\n", "").replace("*checks", "[{contains: ok}]")
    )
    tasks = expand(load_job(tmp_path / "job.yaml"))
    assert [t.conversation_id for t in tasks] == ["merged/one#r0", "merged/two#r0"]


def test_jobfile_load_alias_bomb_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.perf_counter()
    with pytest.raises(YAMLProblems, match="refusing a possible alias bomb"):
        load_yaml("\n".join(lines) + "\n", "bomb.yaml")
    assert time.perf_counter() - started < 5  # memoised counting: no expansion happens


def test_jobfile_load_oversized_file_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with open(path, "wb") as fh:
        fh.truncate(MAX_YAML_BYTES + 1)
    with pytest.raises(JobFileError) as info:
        load_job(path)
    assert [str(p) for p in info.value.problems] == [f"{path}: job file is 5.2 MB; the limit is 5 MB"]


def test_jobfile_load_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match=r"nope.yaml: job file not found$"):
        load_job(tmp_path / "nope.yaml")
    with pytest.raises(JobFileError, match=r"is a directory, not a job file$"):
        load_job(tmp_path)


def test_jobfile_load_warnings_do_not_fail(tmp_path: Path) -> None:
    text = """\
name: warn
model: m
assistants:
  used: {}
  spare: {}
  existing: {id: asst_1, instructions: be nice}
conversations:
  - {id: c, assistant: used, turns: [{user: hi}]}
  - {id: d, assistant: existing, turns: [{user: hi}], tool_outputs: {anything: x}}
matrix:
  flavor: [a, b]
"""
    (tmp_path / "job.yaml").write_text(text)
    job = load_job(tmp_path / "job.yaml")
    assert [str(w).split(": ", 1)[1] for w in job.warnings] == [
        "assistants.spare: warning: no conversation uses this assistant",
        "assistants.existing.id: warning: with `id` the existing assistant is used as it is: instructions and "
        "temperature here only serve the responses and chat APIs",
        "matrix.flavor: warning: {{flavor}} is used nowhere; conversations still run once per value",
    ]
    assert len(expand(job)) == 4


def test_jobfile_load_dataset_problems_capped(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "name: j\nmodel: m\nassistants: {a: {}}\nconversations:\n  - {id: c, dataset: r.jsonl, turns: [{user: hi}]}\n"
    )
    (tmp_path / "r.jsonl").write_text("[1]\n" * 80)
    with pytest.raises(JobFileError) as info:
        load_job(tmp_path / "job.yaml")
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 51
    assert problems[-1] == f"{tmp_path / 'r.jsonl'}: ... and 30 more problems"


def test_jobfile_load_rendered_regex_checked_per_row(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "name: j\nmodel: m\nassistants: {a: {}}\nconversations:\n"
        "  - id: c\n    dataset: r.csv\n    turns: [{user: hi, expect: [{regex: '^{{p}}$'}]}]\n"
    )
    (tmp_path / "r.csv").write_text("p\nok\n(bad\n")
    with pytest.raises(JobFileError) as info:
        load_job(tmp_path / "job.yaml")
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'r.csv'}:3: row 2: conversations[0].turns[0].expect[0].regex: invalid regex '^(bad$': "
        "missing ), unterminated subpattern at position 1 (after filling in this row)"
    ]
