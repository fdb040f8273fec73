"""Datasets: one conversation per row of a `.jsonl`, `.csv` or `.yaml` file, each row located by line.

`read_dataset` gives the rows and the file's bytes (they enter the job's digest); every problem
(a bad line, a duplicate or malformed row id) is raised at once as `YAMLProblems`, located in the
dataset file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import Problem
from runner.jobs.yamlload import (
    MAX_PROBLEMS_PER_FILE,
    MAX_YAML_BYTES,
    YAMLProblems,
    decode,
    load_yaml,
    read_bytes,
    shorten,
)

MAX_DATASET_BYTES = 200 * 1024 * 1024

DATASET_SUFFIXES = (".jsonl", ".csv", ".yaml", ".yml")


@dataclass(slots=True)
class Row:
    """One dataset row: its 1-based row number, its line in the dataset file, its values."""

    number: int
    line: int
    values: dict[str, Any]
    id: str = ""  # its part of the conversation id: its `id` value, else its row number


def read_dataset(path: Path, shown: str) -> tuple[list[Row], bytes]:
    """Rows and the file's bytes (for the job digest); raises YAMLProblems located in the dataset."""
    suffix = path.suffix.lower()
    limit = MAX_YAML_BYTES if suffix in (".yaml", ".yml") else MAX_DATASET_BYTES
    data = read_bytes(path, shown, limit, "dataset")
    text = decode(data, shown)
    problems: list[Problem] = []
    if suffix == ".jsonl":
        rows = list(_jsonl_rows(text, shown, problems))
    elif suffix == ".csv":
        rows = list(_csv_rows(text, shown, problems))
    else:
        rows = _yaml_rows(text, shown, problems)
    if not rows and not problems:
        problems.append(Problem(shown, None, "", "the dataset has no rows"))
    seen: dict[str, int] = {}
    for row in rows:
        value = row.values.get("id", row.number)
        row.id = text = value if isinstance(value, str) else str(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, str | int)
            or not text.strip()
            or "#" in text
            or "/" in text
        ):
            what = f"an id is a non-empty string or number without '#' or '/', got {value!r}"
            problems.append(Problem(shown, row.line, f"row {row.number}", what))
        elif text in seen:
            what = f"duplicate row id {text!r} (first at line {seen[text]})"
            problems.append(Problem(shown, row.line, f"row {row.number}", what))
        seen.setdefault(text, row.line)
    if problems:
        raise YAMLProblems(_capped(problems, shown))
    return rows, data


def _capped(problems: list[Problem], shown: str) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS_PER_FILE:
        return problems
    rest = len(problems) - MAX_PROBLEMS_PER_FILE
    return [*problems[:MAX_PROBLEMS_PER_FILE], Problem(shown, None, "", f"... and {rest} more problems")]


def _jsonl_rows(text: str, shown: str, problems: list[Problem]) -> Iterator[Row]:
    number = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        number += 1
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(
                Problem(shown, lineno, f"row {number}", f"invalid JSON: {e.msg} (column {e.colno})")
            )
            continue
        if not isinstance(value, dict):
            problems.append(
                Problem(shown, lineno, f"row {number}", f"a row must be a JSON object, got {shorten(value)}")
            )
            continue
        yield Row(number, lineno, value)


def _csv_rows(text: str, shown: str, problems: list[Problem]) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            problems.append(Problem(shown, 1, "", "no header row (the first line names the columns)"))
            return
        header = [h.strip() for h in header]
        for i, name in enumerate(header):
            if not name:
                problems.append(Problem(shown, 1, "header", f"column {i + 1} has no name"))
            elif name in header[:i]:
                problems.append(Problem(shown, 1, "header", f"duplicate column {name!r}"))
        number, start = 0, reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if not values or values == [""]:
                continue
            number += 1
            if len(values) != len(header):
                problems.append(
                    Problem(
                        shown,
                        line,
                        f"row {number}",
                        f"{len(values)} values, but the header has {len(header)} columns",
                    )
                )
                continue
            yield Row(number, line, dict(zip(header, values, strict=True)))
    except csv.Error as e:
        problems.append(Problem(shown, reader.line_num or 1, "", f"invalid CSV: {e}"))


def _yaml_rows(text: str, shown: str, problems: list[Problem]) -> list[Row]:
    data, loc = load_yaml(text, shown)
    if not isinstance(data, list):
        problems.append(Problem(shown, loc.line(()), "", "a YAML dataset must be a list of mappings"))
        return []
    rows = []
    for i, item in enumerate(data):
        line = loc.line((i,)) or 1
        if not isinstance(item, dict):
            problems.append(
                Problem(shown, line, f"row {i + 1}", f"a row must be a mapping, got {shorten(item)}")
            )
        else:
            rows.append(Row(i + 1, line, item))
    return rows


# --- pydantic errors → problems --------------------------------------------------------------------
