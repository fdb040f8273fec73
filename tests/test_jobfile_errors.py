"""Broken job files: each one is reported at the right line with the right message, and
`runner validate` exits 2 without a traceback."""

# ruff: noqa: E501  (tables of exact messages read best one per line)

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.errors import JobFileError
from runner.jobs import load_job

HEAD = """\
name: t
model: m
assistants:
  a: {instructions: hi}
"""
"""The first four lines of most cases (so their lines start at 5)."""


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes]
    expected: list[str]


def case(id: str, job: str | bytes, *expected: str, **files: str | bytes) -> Case:
    text = job if isinstance(job, bytes) else textwrap.dedent(job)
    return Case(
        id,
        {"job.yaml": text, **{k.replace("__", "/").replace("_dot_", "."): v for k, v in files.items()}},
        list(expected),
    )


def conv(body: str = "") -> str:
    """HEAD + one conversation (`id: c`, at line 6) + `body` (dedented, at the top level)."""
    return HEAD + "conversations:\n  - id: c\n    turns:\n      - user: hello\n" + body


def write_files(folder: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


CHECKS_LIST = (
    "contains, not_contains, icontains, not_icontains, equals, starts_with, ends_with, regex, not_regex, is_json, "
    "json_schema, min_length, max_length, max_latency_ms, max_tokens, max_total_tokens, tool_called, not_tool_called, judge, python, similar"
)

CASES = [
    # --- YAML itself
    case(
        "yaml-syntax",
        "name: t\nassistants: [a\n",
        "job.yaml:3: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 2)",
    ),
    case(
        "yaml-bad-indent",
        "name: t\n  model: m\nassistants: {}\n",
        "job.yaml:2: invalid YAML: mapping values are not allowed in this context",
    ),
    case(
        "yaml-tab",
        "name: t\n\tmodel: m\n",
        "job.yaml:2: invalid YAML: found a tab character that violates indentation (while scanning a plain scalar at line 1)",
    ),
    case(
        "yaml-two-documents",
        "name: t\n---\nname: u\n",
        "job.yaml:2: invalid YAML: but found another document (expected a single document in the stream at line 1)",
    ),
    case("empty-file", "", "job.yaml: the file is empty"),
    case("only-comments", "# nothing here\n\n", "job.yaml: the file is empty"),
    case(
        "top-level-list",
        "- name: t\n",
        "job.yaml:1: a job file is a mapping (name:, assistants:, conversations:, ...)",
    ),
    case("duplicate-key", HEAD + "model: n\n", "job.yaml:5: model: duplicate key 'model' (first at line 2)"),
    case(
        "duplicate-nested-key",
        "name: t\nassistants:\n  a:\n    model: m\n    model: n\n",
        "job.yaml:5: assistants.a.model: duplicate key 'model' (first at line 4)",
    ),
    case(
        "python-tag",
        "name: !!python/object/apply:os.system ['true']\n",
        "job.yaml:1: name: tag !!python/object/apply:os.system is not allowed (only plain YAML: strings, numbers, true/false, null, lists, mappings)",
    ),
    case(
        "custom-tag",
        "name: !secret t\n",
        "job.yaml:1: name: tag !secret is not allowed (only plain YAML: strings, numbers, true/false, null, lists, mappings)",
    ),
    case(
        "complex-key",
        "? [a, b]\n: 1\nname: t\n",
        "job.yaml:1: a key must be a plain value, not a list or mapping",
    ),
    case("not-utf8", b"name: t\nmodel: \xff\n", "job.yaml:2: not UTF-8 text (byte 16)"),
    # --- shape and types
    case(
        "missing-name",
        "model: m\nassistants:\n  a: {}\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:1: missing required key 'name'",
    ),
    case("missing-conversations", HEAD, "job.yaml:1: missing required key 'conversations'"),
    case(
        "missing-turns",
        HEAD + "conversations:\n  - id: c\n",
        "job.yaml:6: conversations[0]: missing required key 'turns'",
    ),
    case(
        "unknown-top-key",
        conv() + "modle: x\n",
        "job.yaml:9: unknown key 'modle' (did you mean 'model'?); valid keys: api, assistants, batch_api, conversations, description, grader, limits, matrix, model, name, output, repeat, schedule, simulator, version",
    ),
    case(
        "unknown-assistant-key",
        "name: t\nmodel: m\nassistants:\n  a: {instruction: hi}\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:4: assistants.a: unknown key 'instruction' (did you mean 'instructions'?); valid keys: adopt, extra_body, id, instructions, max_output_tokens, model, name, parallel_tool_calls, reasoning_effort, response_format, seed, stop, temperature, tool_choice, tools, top_p",
    ),
    case(
        "unknown-conversation-key",
        HEAD + "conversations:\n  - id: c\n    turn: [{user: hi}]\n",
        "job.yaml:6: conversations[0]: missing required key 'turns'",
        "job.yaml:7: conversations[0]: unknown key 'turn' (did you mean 'turns'?); valid keys: assistant, dataset, expect, id, tool_outputs, turns, vars",
    ),
    case(
        "unknown-check-type",
        conv("        expect:\n          - contain: x\n"),
        f"job.yaml:10: conversations[0].turns[0].expect[0]: unknown check type 'contain' (did you mean 'contains'?); valid types: {CHECKS_LIST}",
    ),
    case(
        "two-checks-one-item",
        conv("        expect:\n          - {contains: x, regex: y}\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0]: one check per item, got contains, regex; write each as its own `- type: value`",
    ),
    case(
        "empty-check",
        conv("        expect:\n          - {}\n"),
        f"job.yaml:10: conversations[0].turns[0].expect[0]: empty check; give one of: {CHECKS_LIST}",
    ),
    case(
        "check-without-value",
        conv("        expect:\n          - contains:\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0]: contains needs a value",
    ),
    case(
        "is-json-false",
        conv("        expect:\n          - is_json: no\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0].is_json: expected true, got the string 'no'",
    ),
    case(
        "repeat-not-int",
        conv() + "repeat: many\n",
        "job.yaml:9: repeat: expected an integer, got the string 'many'",
    ),
    case(
        "turns-not-list",
        HEAD + "conversations:\n  - id: c\n    turns: hello\n",
        "job.yaml:7: conversations[0].turns: expected a list, got the string 'hello'",
    ),
    case(
        "assistants-a-list",
        "name: t\nassistants: [a]\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:2: assistants: expected a mapping (key: value), got a list",
    ),
    case(
        "api-typo",
        conv() + "api: chta\n",
        "job.yaml:9: api: expected 'assistants', 'responses' or 'chat', got the string 'chta' (did you mean 'chat'?)",
    ),
    case("version-2", "version: 2\n" + conv(), "job.yaml:1: version: expected 1, got 2"),
    case(
        "name-with-space",
        conv().replace("name: t", "name: my job"),
        "job.yaml:1: name: a job name uses only letters, digits, '.', '_' and '-', got 'my job'",
    ),
    case(
        "empty-user-turn",
        HEAD + "conversations:\n  - id: c\n    turns:\n      - user: ''\n",
        "job.yaml:8: conversations[0].turns[0].user: must not be empty",
    ),
    case("no-conversations", HEAD + "conversations: []\n", "job.yaml:5: conversations: must not be empty"),
    case(
        "temperature-too-high",
        "name: t\nmodel: m\nassistants:\n  a: {temperature: 3}\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:4: assistants.a.temperature: must be less than or equal to 2, got 3",
    ),
    case(
        "function-tool-without-function",
        "name: t\nmodel: m\nassistants:\n  a:\n    tools:\n      - type: function\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:6: assistants.a.tools[0]: a function tool needs `function:`; other tool types take none",
    ),
    case(
        "tool-parameters-bad-schema",
        "name: t\nmodel: m\nassistants:\n  a:\n    tools:\n      - type: function\n        function: {name: f, parameters: {type: objekt}}\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:7: assistants.a.tools[0].function.parameters: invalid JSON Schema: 'objekt' is not valid under any of the given schemas",
    ),
    # --- limits
    case(
        "concurrency-zero",
        conv() + "limits: {concurrency: 0}\n",
        "job.yaml:9: limits.concurrency: must be greater than 0, got 0",
    ),
    case(
        "rpm-negative",
        conv() + "limits:\n  requests_per_minute: -5\n",
        "job.yaml:10: limits.requests_per_minute: must be greater than 0, got -5",
    ),
    case(
        "timeout-zero",
        conv() + "limits:\n  run_timeout_s: 0\n",
        "job.yaml:10: limits.run_timeout_s: must be greater than 0, got 0",
    ),
    case(
        "max-tokens-zero",
        conv("        expect:\n          - max_tokens: 0\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0].max_tokens: must be greater than 0, got 0",
    ),
    # --- conversations across keys
    case(
        "conversation-id-hash",
        HEAD + "conversations:\n  - id: 'a#b'\n    turns: [{user: hi}]\n",
        "job.yaml:6: conversations[0].id: a conversation id must be non-empty, without surrounding spaces, '#' or '/', got 'a#b'",
    ),
    case(
        "unknown-assistant",
        HEAD + "conversations:\n  - id: c\n    assistant: b\n    turns: [{user: hi}]\n",
        "job.yaml:7: conversations[0].assistant: unknown assistant 'b'; defined: a",
    ),
    case(
        "assistant-typo",
        "name: t\nmodel: m\nassistants:\n  support: {}\n  sales: {}\nconversations:\n  - id: c\n    assistant: suport\n    turns: [{user: hi}]\n",
        "job.yaml:8: conversations[0].assistant: unknown assistant 'suport' (did you mean 'support'?); defined: support, sales",
    ),
    case(
        "no-assistant-of-several",
        "name: t\nmodel: m\nassistants:\n  support: {}\n  sales: {}\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:7: conversations[0]: name an assistant with `assistant:`; the job has several: support, sales",
    ),
    case(
        "duplicate-conversation-id",
        HEAD + "conversations:\n  - id: c\n    turns: [{user: hi}]\n  - id: c\n    turns: [{user: ho}]\n",
        "job.yaml:8: conversations[1].id: duplicate conversation id 'c' (first at line 6)",
    ),
    case(
        "no-model",
        "name: t\nassistants:\n  a: {}\nconversations:\n  - id: c\n    turns: [{user: hi}]\n",
        "job.yaml:3: assistants.a: no model: set `model` on it or on the job, or a matrix `model`",
    ),
    case(
        "undefined-var-in-turn",
        HEAD
        + "conversations:\n  - id: c\n    vars: {product: pen}\n    turns:\n      - user: my {{produc}}\n",
        "job.yaml:9: conversations[0].turns[0].user: {{produc}} is not defined (did you mean 'product'?); defined: product (define it in `vars`, a dataset column or a matrix key)",
    ),
    case(
        "undefined-var-in-check",
        conv("        expect:\n          - json_schema: {enum: ['{{x}}']}\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0].json_schema: {{x}} is not defined (define it in `vars`, a dataset column or a matrix key)",
    ),
    case(
        "bad-var-name",
        HEAD + "conversations:\n  - id: c\n    vars: {my var: 1}\n    turns: [{user: hi}]\n",
        "job.yaml:7: conversations[0].vars.my var: 'my var' is not a variable name (letters, digits, _)",
    ),
    case(
        "tool-output-unknown-function",
        "name: t\nmodel: m\nassistants:\n  a:\n    tools:\n      - type: function\n        function: {name: lookup_order}\nconversations:\n  - id: c\n    tool_outputs: {lookup_ordr: x}\n    turns: [{user: hi}]\n",
        "job.yaml:10: conversations[0].tool_outputs.lookup_ordr: assistant 'a' has no function tool 'lookup_ordr' (did you mean 'lookup_order'?); it has: lookup_order",
    ),
    # --- an invalid conversation: what did validate of it is still checked across keys
    case(
        "invalid-conversation-still-checked",
        "name: probe\nassistants:\n  a: {instructions: Be brief., model: gpt-4o-mini}\nconversations:\n  - id: one\n    turns:\n      - user: hello {{who}}\n        expect: [{contain: hello}]\n  - id: one\n    turns: []\n",
        "job.yaml:7: conversations[0].turns[0].user: {{who}} is not defined (define it in `vars`, a dataset column or a matrix key)",
        f"job.yaml:8: conversations[0].turns[0].expect[0]: unknown check type 'contain' (did you mean 'contains'?); valid types: {CHECKS_LIST}",
        "job.yaml:9: conversations[1].id: duplicate conversation id 'one' (first at line 5)",
        "job.yaml:10: conversations[1].turns: must not be empty",
    ),
    case(
        "invalid-conversation-unknown-assistant",
        HEAD
        + "conversations:\n  - id: c\n    assistant: b\n    turns:\n      - user: hi\n        expect: [{contain: x}]\n",
        "job.yaml:7: conversations[0].assistant: unknown assistant 'b'; defined: a",
        f"job.yaml:10: conversations[0].turns[0].expect[0]: unknown check type 'contain' (did you mean 'contains'?); valid types: {CHECKS_LIST}",
    ),
    case(
        "invalid-vars-no-undefined-var-guesses",
        HEAD + "conversations:\n  - id: c\n    vars: [x]\n    turns: [{user: 'hi {{x}} {{y}}'}]\n",
        "job.yaml:7: conversations[0].vars: expected a mapping (key: value), got a list",
    ),
    case(
        "invalid-turn-valid-checks-still-checked",
        HEAD
        + "conversations:\n  - id: c\n    turns:\n      - user: ''\n        expect: [{contains: '{{z}}'}, {regex: '('}]\n      - {user: '{{q}}', extra: 1}\n",
        "job.yaml:8: conversations[0].turns[0].user: must not be empty",
        "job.yaml:9: conversations[0].turns[0].expect[1]: invalid regex '(': missing ), unterminated subpattern at position 0",
        "job.yaml:9: conversations[0].turns[0].expect[0].contains: {{z}} is not defined (define it in `vars`, a dataset column or a matrix key)",
        "job.yaml:10: conversations[0].turns[1]: unknown key 'extra'; valid keys: expect, user",
        "job.yaml:10: conversations[0].turns[1].user: {{q}} is not defined (define it in `vars`, a dataset column or a matrix key)",
    ),
    case(
        "invalid-conversation-dataset-columns",
        HEAD
        + "conversations:\n  - id: c\n    dataset: rows.jsonl\n    extra: 1\n    turns: [{user: 'hi {{name}} {{nme}}'}]\n",
        "job.yaml:8: conversations[0]: unknown key 'extra'; valid keys: assistant, dataset, expect, id, tool_outputs, turns, vars",
        "job.yaml:9: conversations[0].turns[0].user: {{nme}} is not defined (did you mean 'name'?); defined: name (define it in `vars`, a dataset column or a matrix key)",
        rows_dot_jsonl='{"name": "ada"}\n',
    ),
    # --- check values
    case(
        "invalid-regex",
        conv("        expect:\n          - regex: '(unclosed'\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0]: invalid regex '(unclosed': missing ), unterminated subpattern at position 0",
    ),
    case(
        "invalid-not-regex",
        conv("        expect:\n          - not_regex: '*x'\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0]: invalid regex '*x': nothing to repeat at position 0",
    ),
    case(
        "regex-invalid-after-vars",
        HEAD
        + "conversations:\n  - id: c\n    vars: {p: '('}\n    turns:\n      - user: hi\n        expect:\n          - regex: 'a{{p}}'\n",
        "job.yaml:11: conversations[0].turns[0].expect[0].regex: invalid regex 'a(': missing ), unterminated subpattern at position 1 (after filling in the vars)",
    ),
    case(
        "json-schema-invalid",
        conv("        expect:\n          - json_schema: {type: 12}\n"),
        "job.yaml:10: conversations[0].turns[0].expect[0]: invalid JSON Schema at type: 12 is not valid under any of the given schemas",
    ),
    # --- top-level values
    case(
        "invalid-cron",
        conv() + "schedule: '61 * * * *'\n",
        "job.yaml:9: schedule: invalid cron expression '61 * * * *': [61 * * * *] is not acceptable, out of range",
    ),
    case(
        "output-placeholder",
        conv() + "output: 'runs/{nme}.jsonl'\n",
        "job.yaml:9: output: unknown placeholder {nme} in output (did you mean 'name'?); allowed: {name} {batch} {date} {time}",
    ),
    case(
        "output-format-spec",
        conv() + "output: 'runs/{date:%Y}.jsonl'\n",
        "job.yaml:9: output: placeholder {date} takes no format spec or conversion; allowed: {name} {batch} {date} {time}",
    ),
    case(
        "simulator-bad-regex",
        conv() + "simulator:\n  rules:\n    - {when: '[a-', reply: x}\n",
        "job.yaml:11: simulator.rules[0].when: invalid regex '[a-': unterminated character set at position 0",
    ),
    case(
        "simulator-two-actions",
        conv() + "simulator:\n  rules:\n    - {when: x, reply: y, fail: true}\n",
        "job.yaml:11: simulator.rules[0]: a rule needs exactly one of reply, call, fail, quota_exhausted",
    ),
    case(
        "matrix-bad-api",
        conv() + "matrix:\n  api: [chat, complete]\n",
        "job.yaml:10: matrix.api[1]: expected one of assistants, responses, chat, got 'complete'",
    ),
    case(
        "matrix-empty-list",
        conv() + "matrix:\n  model: []\n",
        "job.yaml:10: matrix.model: list at least one value",
    ),
    case(
        "matrix-duplicate-value",
        conv() + "matrix:\n  model: [x, y, x]\n",
        "job.yaml:10: matrix.model[2]: 'x' is listed twice",
    ),
    case(
        "matrix-temperature",
        conv() + "matrix:\n  temperature: [0.5, 7]\n",
        "job.yaml:10: matrix.temperature[1]: a temperature is a number from 0 to 2, got 7",
    ),
    # --- datasets
    case(
        "dataset-missing",
        HEAD + "conversations:\n  - id: c\n    dataset: data/none.jsonl\n    turns: [{user: hi}]\n",
        "job.yaml:7: conversations[0].dataset: dataset not found: data/none.jsonl",
    ),
    case(
        "dataset-unsupported",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.txt\n    turns: [{user: hi}]\n",
        "job.yaml:7: conversations[0].dataset: unsupported dataset type '.txt'; use .jsonl, .csv, .yaml or .yml",
        rows_dot_txt="a\n",
    ),
    case(
        "dataset-is-directory",
        HEAD + "conversations:\n  - id: c\n    dataset: data.jsonl\n    turns: [{user: hi}]\n",
        "job.yaml:7: conversations[0].dataset: dataset is not a file: data.jsonl",
        data_dot_jsonl__x="{}\n",
    ),
    case(
        "dataset-bad-json",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.jsonl\n    turns: [{user: hi}]\n",
        "rows.jsonl:3: row 2: invalid JSON: Expecting ',' delimiter (column 9)",
        rows_dot_jsonl='{"a": 1}\n\n{"a": 2 "b": 3}\n',
    ),
    case(
        "dataset-not-utf8",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.csv\n    turns: [{user: hi}]\n",
        "rows.csv:2: not UTF-8 text (byte 5)",
        rows_dot_csv=b"a,b\n\xff,2\n",
    ),
    case(
        "dataset-row-not-object",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.jsonl\n    turns: [{user: hi}]\n",
        "rows.jsonl:2: row 2: a row must be a JSON object, got [1, 2]",
        rows_dot_jsonl='{"a": 1}\n[1, 2]\n',
    ),
    case(
        "dataset-csv-columns",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.csv\n    turns: [{user: hi}]\n",
        "rows.csv:3: row 2: 3 values, but the header has 2 columns",
        rows_dot_csv="a,b\n1,2\n1,2,3\n",
    ),
    case(
        "dataset-missing-var",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.jsonl\n    turns: [{user: 'hi {{name}}'}]\n",
        "rows.jsonl:2: row 2: no value for {{name}} (used by conversation 'c')",
        rows_dot_jsonl='{"name": "ada"}\n{"nme": "bob"}\n',
    ),
    case(
        "dataset-duplicate-row-id",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.yaml\n    turns: [{user: hi}]\n",
        "rows.yaml:3: row 3: duplicate row id 'x' (first at line 1)",
        rows_dot_yaml="- {id: x}\n- {id: y}\n- {id: x}\n",
    ),
    case(
        "dataset-empty",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.jsonl\n    turns: [{user: hi}]\n",
        "rows.jsonl: the dataset has no rows",
        rows_dot_jsonl="\n",
    ),
    case(
        "dataset-yaml-not-list",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.yml\n    turns: [{user: hi}]\n",
        "rows.yml:1: a YAML dataset must be a list of mappings",
        rows_dot_yml="a: 1\n",
    ),
    case(
        "dataset-yaml-syntax",
        HEAD + "conversations:\n  - id: c\n    dataset: rows.yml\n    turns: [{user: hi}]\n",
        "rows.yml:2: invalid YAML: did not find expected '-' indicator (while parsing a block collection at line 1)",
        rows_dot_yml="- a: 1\n b: 2\n",
    ),
    # --- refused before anything big is built
    case(
        "alias-bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
        "job.yaml: YAML aliases expand to 1,234,573 nodes (limit: 100,000 more than the file's own); refusing a possible alias bomb",
    ),
    case("recursive-alias", "a: &a [1, *a]\n", "job.yaml:1: an alias refers to itself (recursive)"),
    case("deep-nesting", "a: " + "[" * 70 + "]" * 70 + "\n", "job.yaml:1: nested more than 64 levels deep"),
]


def test_jobfile_errors_table_is_large_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({str(c.files) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_jobfile_errors_reported_at_line(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_files(tmp_path, case.files)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", "job.yaml"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == case.expected
    with pytest.raises(JobFileError) as info:
        load_job("job.yaml")
    assert [str(p) for p in info.value.problems] == case.expected
