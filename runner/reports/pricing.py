"""Estimated cost of a run: a per-model price table the user can override.

Prices are US dollars per 1M tokens, input (prompt) and output (completion) apart. The built-in
table is a snapshot of public list prices and is only an estimate; users override or extend it with
a YAML/JSON file given by `--prices FILE` or the `RUNNER_PRICES` environment variable::

    gpt-4o-mini: {input: 0.15, output: 0.60}
    my-finetune: {input: 0.30, output: 1.20}

A model with no price is reported as unknown, never as costing zero. Dated snapshots such as
`gpt-4o-mini-2024-07-18` take the price of their longest listed prefix (`gpt-4o-mini`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runner.errors import UsageError
from runner.records import Record

"""Environment variable naming a price file (used when `--prices` is not given)."""


@dataclass(frozen=True)
class Price:
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "o1": Price(15.00, 60.00),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
}


@dataclass(frozen=True)
class PriceTable:
    prices: Mapping[str, Price]

    def lookup(self, model: str) -> Price | None:
        """The model's price: exact name first, then the longest listed prefix followed by `-`."""
        if model in self.prices:
            return self.prices[model]
        best = max((m for m in self.prices if model.startswith(m + "-")), key=len, default=None)
        return None if best is None else self.prices[best]


@dataclass
class CostEstimate:
    """Cost of a set of records: the priced part, and the tokens of models without a price."""

    usd: float = 0.0
    by_model: dict[str, float] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)  # model -> total tokens not priced
    no_usage: int = 0  # priced conversations whose usage the server did not report

    @property
    def complete(self) -> bool:
        return not self.unknown and not self.no_usage

    def describe(self) -> str:
        """One line: `$0.0123`, `$0.0123 + unknown (no price for: m1, m2)` or `unknown (...)`."""
        why = []
        if self.unknown:
            why.append(f"no price for: {', '.join(sorted(self.unknown))}")
        if self.no_usage:
            why.append(f"{self.no_usage} conversation{'s' if self.no_usage != 1 else ''} without usage")
        if not self.by_model:
            return f"unknown ({'; '.join(why)})" if why else format_usd(0.0)
        text = format_usd(self.usd)
        return f"{text} + unknown ({'; '.join(why)})" if why else text


def format_usd(usd: float) -> str:
    # Small suites cost fractions of a cent; keep enough digits to tell runs apart.
    if usd >= 1 or usd == 0:
        return f"${usd:.2f}"
    return f"${usd:.4f}" if usd >= 0.01 else f"${usd:.6f}"


def estimate(records: Iterable[Record], table: PriceTable) -> CostEstimate:
    est = CostEstimate()
    for r in records:
        model, usage = r["model"], r["usage"]
        price = table.lookup(model)
        if price is None:
            est.unknown[model] = est.unknown.get(model, 0) + (usage["total_tokens"] or 0)
            continue
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        if prompt is None or completion is None:
            est.no_usage += 1
            continue
        usd = (prompt * price.input + completion * price.output) / 1e6
        est.usd += usd
        est.by_model[model] = est.by_model.get(model, 0.0) + usd
    return est


def load_prices(path: str | None = None) -> PriceTable:
    """The built-in table, overridden by the price file `path` (`--prices`, or `Settings.prices`
    from $RUNNER_PRICES, chosen by the caller)."""
    prices = dict(DEFAULT_PRICES)
    if path is not None:
        prices.update(_read_price_file(Path(path)))
    return PriceTable(prices)


def _read_price_file(path: Path) -> dict[str, Price]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot read price file: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        data = {}  # an empty file overrides nothing
    if isinstance(data, dict) and set(data) == {"models"}:
        data = data["models"]  # also accept the table nested under `models:`
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of model -> {{input: USD, output: USD}} per 1M tokens")
    out: dict[str, Price] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
            raise UsageError(f"{path}: {model}: expected {{input: USD, output: USD}} per 1M tokens")
        values = [entry["input"], entry["output"]]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
            raise UsageError(f"{path}: {model}: prices must be numbers >= 0 (USD per 1M tokens)")
        out[str(model)] = Price(float(values[0]), float(values[1]))
    return out
