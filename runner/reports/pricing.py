"""Estimated cost of a run: a per-model price table the user can override.

Prices are US dollars per 1M tokens, input (prompt) and output (completion) apart. The built-in
table is a snapshot of public list prices and is only an estimate; users override or extend it with
a YAML/JSON file given by `--prices FILE` or the `RUNNER_PRICES` environment variable::

    gpt-4o-mini: {input: 0.15, output: 0.60}
    my-finetune: {input: 0.30, output: 1.20, batch_input: 0.15, batch_output: 0.60}

Turns answered through the Batch API (`via: batch` in the record) are priced at the batch price,
half the list price unless `batch_input` / `batch_output` say otherwise, and the report shows what
that saved against direct calls.

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
from runner.records import Record, Usage

"""Environment variable naming a price file (used when `--prices` is not given)."""


BATCH_DISCOUNT = 0.5
"""Turns answered through the provider's Batch API (`via: batch`) cost this share of the list
price unless the price table says otherwise (`batch_input`, `batch_output`): OpenAI's is half."""


@dataclass(frozen=True)
class Price:
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens
    batch_input: float | None = None  # through the Batch API (None: BATCH_DISCOUNT × input)
    batch_output: float | None = None

    def usd(self, prompt: int, completion: int, batch: bool = False) -> float:
        if not batch:
            return (prompt * self.input + completion * self.output) / 1e6
        bi = self.batch_input if self.batch_input is not None else self.input * BATCH_DISCOUNT
        bo = self.batch_output if self.batch_output is not None else self.output * BATCH_DISCOUNT
        return (prompt * bi + completion * bo) / 1e6


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
    "text-embedding-3-small": Price(0.02, 0.0),  # `similar` checks: embeddings have no output tokens
    "text-embedding-3-large": Price(0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.0),
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
    batch_saving: float = 0.0  # what the Batch API turns saved against direct calls
    grading_usd: float = 0.0  # the part of `usd` spent by graders (`grader_usage`), included above
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
        if self.batch_saving > 0:
            text += f" (Batch API: {format_usd(self.batch_saving)} saved against direct calls)"
        return f"{text} + unknown ({'; '.join(why)})" if why else text


def format_usd(usd: float) -> str:
    # Small suites cost fractions of a cent; keep enough digits to tell runs apart.
    if usd >= 1 or usd == 0:
        return f"${usd:.2f}"
    return f"${usd:.4f}" if usd >= 0.01 else f"${usd:.6f}"


def estimate(records: Iterable[Record], table: PriceTable) -> CostEstimate:
    """The cost of the conversations (Batch API turns at the batch price) and of their grading
    (`grader_usage`, priced per model). Unknown prices and unknown usage stay unknown, never zero."""
    est = CostEstimate()
    for r in records:
        model, usage = r["model"], r["usage"]
        price = table.lookup(model)
        usd = _add(est, table, model, usage)
        if usd is not None and price is not None:
            for t in r["turns"]:
                u = t["usage"]
                if t.get("via") != "batch" or u["prompt_tokens"] is None or u["completion_tokens"] is None:
                    continue
                # priced at the batch price; the difference is the saving
                saved = price.usd(u["prompt_tokens"], u["completion_tokens"]) - price.usd(
                    u["prompt_tokens"], u["completion_tokens"], batch=True
                )
                usd -= saved
                est.by_model[model] -= saved
                est.batch_saving += saved
            est.usd += usd
        grading = r.get("grader_usage")
        for grader_model, grader_usage in (grading["by_model"] if grading else {}).items():
            graded = _add(est, table, grader_model, grader_usage)
            if graded is not None:
                est.usd += graded
                est.grading_usd += graded
    return est


def _add(est: CostEstimate, table: PriceTable, model: str, usage: Usage) -> float | None:
    """Price `usage` of `model` into `est.by_model`; None (and noted) when price or usage is unknown."""
    price = table.lookup(model)
    if price is None:
        est.unknown[model] = est.unknown.get(model, 0) + (usage["total_tokens"] or 0)
        return None
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    if prompt is None or completion is None:
        est.no_usage += 1
        return None
    usd = price.usd(prompt, completion)
    est.by_model[model] = est.by_model.get(model, 0.0) + usd
    return usd


_PRICE_KEYS = {"input", "output", "batch_input", "batch_output"}


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
        if not isinstance(entry, dict) or not {"input", "output"} <= set(entry) <= _PRICE_KEYS:
            raise UsageError(f"{path}: {model}: expected {{input: USD, output: USD}} per 1M tokens")
        values = [entry[k] for k in ("input", "output", "batch_input", "batch_output") if k in entry]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
            raise UsageError(f"{path}: {model}: prices must be numbers >= 0 (USD per 1M tokens)")
        batch = [entry.get(k) for k in ("batch_input", "batch_output")]
        out[str(model)] = Price(
            float(entry["input"]), float(entry["output"]), *(None if v is None else float(v) for v in batch)
        )
    return out
