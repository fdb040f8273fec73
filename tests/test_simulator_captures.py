"""Simulator rules may use what their regex captured (issue 17, item 9): `{{1}}`, `{{name}}`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner import RunOptions, run_job

JOB = {
    "name": "captures",
    "api": "chat",
    "model": "gpt-4o-mini",
    "assistants": {
        "bot": {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "lookup_order",
                        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                    },
                }
            ]
        }
    },
    "conversations": [
        {
            "id": "c",
            "tool_outputs": {"lookup_order": "shipped"},
            "turns": [
                {
                    "user": "refund for order A17 please",
                    "expect": [{"equals": "Refund for A17 (order A17)."}],
                },
                {"user": "where is parcel Z9?", "expect": [{"equals": "Parcel Z9: shipped"}]},
            ],
        }
    ],
    "simulator": {
        "rules": [
            {"when": r"refund for (?P<what>order) (\w+)", "reply": "Refund for {{2}} ({{what}} {{2}})."},
            {
                "when": r"parcel (\w+)",
                "call": "lookup_order",
                "arguments": {"order_id": "{{1}}"},
                "then": "Parcel {{1}}: {{tool_output}}",
            },
        ]
    },
}


def test_simulator_captures_fill_replies_arguments_and_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB, sort_keys=False), encoding="utf-8")
    outcome = run_job(str(path), RunOptions(output=str(tmp_path / "o.jsonl"), simulate=True, inline=True))
    (record,) = outcome.records
    assert [t["assistant"] for t in record["turns"]] == ["Refund for A17 (order A17).", "Parcel Z9: shipped"]
    assert record["turns"][1]["tool_calls"][0]["arguments"] == {"order_id": "Z9"}
    assert record["passed"] is True
