"""How a simulator instance behaves: `SimulatorConfig`, its defaults, and loading `--rules FILE`.

Every tunable of the simulator lives here as a named constant, so the CLI, the in-process API and
the docs agree on one set of defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from runner.errors import UsageError
from runner.simulator.rules import SimulatorRules

DEFAULT_LATENCY_S = 0.2
"""How long a run (or background response, chat completion) stays in progress by default."""

LATENCY_JITTER = 0.2
"""Each run lasts latency × U(1 - j, 1 + j) with this j: modest, seeded jitter."""

DEFAULT_RUN_TTL_S = 600.0
"""`expires_at = created_at + run_ttl_s`, like OpenAI's ten minutes (wire-protocol §5.3)."""

REJECTED_KEYS: frozenset[str] = frozenset({"sk-invalid"})
"""API keys always answered with 401 `invalid_api_key`, so tests can provoke auth errors."""

NOMINAL_RPM = 30_000
"""The request limit reported in `x-ratelimit-*` headers when no `rpm` is set (never enforced)."""

NOMINAL_TPM = 150_000_000
"""The token limit reported in `x-ratelimit-*` headers when no `tpm` is set (never enforced)."""

ANY_MODEL = "*"
"""In `models`: accept any non-empty model name (job files run with `--simulate` name their own)."""

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o4-mini",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)
"""The models a simulator knows by default: current OpenAI names (the repo's jobs use gpt-4o-mini and
gpt-4.1-mini) and the embedding models of `/v1/embeddings`. Any other name gets 404
`model_not_found`, like OpenAI."""

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
"""Request bodies above this many bytes get 413 (OpenAI's API front refuses bodies of tens of MB;
20 MiB keeps clear of every legitimate JSON request the runner sends)."""

DEFAULT_FAULT_AFTER_SHARE = 0.5
"""Of the faults `fault_rate` injects, the share that strikes AFTER the request was processed: the
object is created (run, response, message, completion) but the answer is lost (dropped connection,
500/503), or a stream is cut after some events. The rest strike before anything changes."""

VALIDATE_ENV = "RUNNER_SIMULATOR_VALIDATE"
"""`RUNNER_SIMULATOR_VALIDATE=1`: every simulator (also in child processes) checks its own answers
against OpenAI's response schemas and counts violations in its stats."""
DEFAULT_BATCH_LATENCY_S = 2.0
"""How long a provider batch (`/v1/batches`) takes from creation to `completed`: the compressed
clock of the Batch API (OpenAI promises 24 hours)."""

BATCH_WINDOW_FACTOR = 4.0
"""A batch's `expires_at` is `created_at` + this × `batch_latency_s` (its compressed 24 h window)."""

KeyPredicate = Callable[[str], bool]


def validate_from_env() -> bool:
    return os.environ.get(VALIDATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def auto_poll_after_ms(latency_s: float) -> int:
    """A poll interval that sees a typical run finish in about four polls, within [25, 1000] ms."""
    return int(min(1000, max(25, math.ceil(latency_s * 1000 / 4))))


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything that shapes one simulator: timing, limits, faults, replies, auth.

    >>> SimulatorConfig(latency_s=0.05, rpm=60, seed=7)  # doctest: +ELLIPSIS
    SimulatorConfig(latency_s=0.05, rpm=60, ...)
    """

    latency_s: float = DEFAULT_LATENCY_S
    rpm: int | None = None
    tpm: int | None = None
    fault_rate: float = 0.0
    seed: int = 0
    rules: SimulatorRules = field(default_factory=SimulatorRules)
    quota_exhausted: bool = False
    run_ttl_s: float = DEFAULT_RUN_TTL_S
    poll_after_ms: int | None = None
    verbose: bool = False
    reject_keys: frozenset[str] | KeyPredicate = REJECTED_KEYS
    jitter: float = LATENCY_JITTER
    models: tuple[str, ...] = DEFAULT_MODELS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    fault_after_share: float = DEFAULT_FAULT_AFTER_SHARE
    validate_requests: bool = True
    validate_responses: bool = field(default_factory=validate_from_env)
    batch_latency_s: float = DEFAULT_BATCH_LATENCY_S
    batch_fault_rate: float = 0.0  # share of batch lines answered with a 500 in the error file
    batch_expire_rate: float = 0.0  # share of batches that expire with half their lines unrun

    def __post_init__(self) -> None:
        problems = []
        if self.latency_s < 0:
            problems.append("latency_s must be >= 0")
        if self.rpm is not None and self.rpm < 1:
            problems.append("rpm must be >= 1")
        if self.tpm is not None and self.tpm < 1:
            problems.append("tpm must be >= 1")
        if not 0.0 <= self.fault_rate <= 1.0:
            problems.append("fault_rate must be between 0 and 1")
        if self.run_ttl_s <= 0:
            problems.append("run_ttl_s must be > 0")
        if self.poll_after_ms is not None and self.poll_after_ms < 1:
            problems.append("poll_after_ms must be >= 1")
        if not 0.0 <= self.jitter < 1.0:
            problems.append("jitter must be in [0, 1)")
        if isinstance(self.models, str):  # "a,b" from a CLI or an environment: a tuple of names
            object.__setattr__(self, "models", parse_models(self.models))
        elif not isinstance(self.models, tuple):
            object.__setattr__(self, "models", tuple(self.models))
        if not self.models or any(not m for m in self.models):
            problems.append("models must name at least one model (or '*')")
        if self.max_body_bytes < 1:
            problems.append("max_body_bytes must be >= 1")
        if not 0.0 <= self.fault_after_share <= 1.0:
            problems.append("fault_after_share must be between 0 and 1")
        if self.batch_latency_s < 0:
            problems.append("batch_latency_s must be >= 0")
        for name in ("batch_fault_rate", "batch_expire_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if problems:
            raise UsageError("invalid simulator configuration: " + "; ".join(problems))

    @property
    def effective_poll_after_ms(self) -> int:
        return self.poll_after_ms if self.poll_after_ms is not None else auto_poll_after_ms(self.latency_s)

    def is_rejected_key(self, key: str) -> bool:
        if callable(self.reject_keys):
            return bool(self.reject_keys(key))
        return key in self.reject_keys


def parse_models(value: str) -> tuple[str, ...]:
    """`"gpt-4o, o3"` → ("gpt-4o", "o3"); `"*"` → any model."""
    return tuple(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))


def load_rules(path: str | Path) -> SimulatorRules:
    """Rules from a YAML file: either a rules document (`rules:`, `default:`, `latency_s:`) or a job
    file, whose `simulator:` block is used. Raises UsageError with the reason when unusable."""
    p = Path(path)
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{p}: cannot read rules: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{p}: rules must be a mapping")
    if "simulator" in data:  # a job file: only its simulator block matters here
        data = data["simulator"] or {}
        if not isinstance(data, dict):
            raise UsageError(f"{p}: simulator: must be a mapping")
    try:
        return SimulatorRules.model_validate(data)
    except ValidationError as e:
        where = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise UsageError(f"{p}: invalid rules: {where}") from e
