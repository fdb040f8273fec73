"""`runner validate` and `runner schema`, through the real Click group."""

# ruff: noqa: E501  (exact messages and YAML snippets read best one per line)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from runner.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ["jobs/bulk-eval.yaml", "jobs/graded.yaml", "jobs/quickstart.yaml", "jobs/regression-suite.yaml"]
VALID = "name: ok\nmodel: m\nassistants: {a: {}}\nconversations:\n  - {id: c, turns: [{user: hi, expect: [{contains: x}]}]}\n"


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_cli_jobs_validate_samples(in_root: None) -> None:
    result = CliRunner().invoke(main, ["validate", *SAMPLES])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "jobs/bulk-eval.yaml: ok: 80 conversations, 80 turns, 240 checks",
        "jobs/graded.yaml: ok: 1 conversation, 3 turns, 15 checks",
        "jobs/quickstart.yaml: ok: 3 conversations, 6 turns, 8 checks",
        "jobs/regression-suite.yaml: ok: 4 conversations, 5 turns, 17 checks",
    ]
    assert result.stderr == ""


def test_cli_jobs_validate_folder(in_root: None) -> None:
    result = CliRunner().invoke(main, ["validate", "jobs"])
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == SAMPLES


def test_cli_jobs_validate_singular_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("one.yaml").write_text(VALID)
    result = CliRunner().invoke(main, ["validate", "one.yaml"])
    assert (result.exit_code, result.stdout) == (0, "one.yaml: ok: 1 conversation, 1 turn, 1 check\n")


def test_cli_jobs_validate_reports_all_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("good.yaml").write_text(VALID)
    Path("bad.yaml").write_text(VALID.replace("model: m", "model: m\nrepeat: 0") + "bogus: 1\n")
    Path("empty.yaml").write_text("")
    result = CliRunner().invoke(main, ["validate", "bad.yaml", "good.yaml", "missing.yaml", "empty.yaml"])
    assert result.exit_code == 2
    assert result.stdout == "good.yaml: ok: 1 conversation, 1 turn, 1 check\n"
    assert result.stderr.splitlines() == [
        "bad.yaml:3: repeat: must be greater than or equal to 1, got 0",
        "bad.yaml:7: unknown key 'bogus'; valid keys: api, assistants, batch_api, conversations, description, grader, limits, matrix, "
        "model, name, output, repeat, schedule, simulator, version",
        "missing.yaml: job file not found",
        "empty.yaml: the file is empty",
    ]
    assert "Traceback" not in result.output


def test_cli_jobs_validate_empty_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert (result.exit_code, result.stderr) == (2, f"{tmp_path}: no *.yaml or *.yml files in this folder\n")


def test_cli_jobs_validate_needs_a_file() -> None:
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 2 and "Missing argument 'FILES...'" in result.stderr


def test_cli_jobs_validate_prints_warnings_and_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("w.yaml").write_text(
        VALID.replace("a: {}", "a: {}, b: {}").replace("{id: c,", "{id: c, assistant: a,")
    )
    result = CliRunner().invoke(main, ["validate", "w.yaml"])
    assert result.exit_code == 0
    assert result.stderr == "w.yaml:3: assistants.b: warning: no conversation uses this assistant\n"


def _objects(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            found.append(node)
        for v in node.values():
            found += _objects(v)
    elif isinstance(node, list):
        for v in node:
            found += _objects(v)
    return found


def test_cli_jobs_schema(in_root: None) -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "assistant-runner job file"
    assert set(schema["required"]) == {"name", "assistants", "conversations"}
    models = [schema, *(d for d in schema["$defs"].values() if d.get("type") == "object")]
    assert len(models) == 19  # the job and its 18 models (Api is an enum)
    for obj in models:
        assert obj["additionalProperties"] is False, obj.get("title")
    for obj in _objects(schema):
        for name, prop in obj["properties"].items():
            assert prop.get("description") or "$ref" in prop, f"{obj.get('title')}.{name} has no description"
    check = schema["$defs"]["Check"]
    assert check["minProperties"] == check["maxProperties"] == 1
    assert check["properties"]["is_json"] == {
        "const": True,
        "description": check["properties"]["is_json"]["description"],
        "title": "Is Json",
        "type": "boolean",
    }
    assert "model" in schema["properties"]["matrix"]["description"]
    validator = jsonschema.Draft202012Validator(schema)
    for sample in SAMPLES:
        assert list(validator.iter_errors(yaml.safe_load(Path(sample).read_text()))) == [], sample
    bad = yaml.safe_load(Path(SAMPLES[1]).read_text())
    bad["conversations"][0]["turns"][0]["expect"] = [{"containz": "x"}]
    bad["limits"] = {"concurrency": 0}
    assert len(list(validator.iter_errors(bad))) == 2
