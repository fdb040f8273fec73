"""The built-in OpenAI-compatible simulator: a real HTTP server speaking the Assistants v2,
Conversations + Responses and Chat Completions wire protocols, for tests, benchmarks, demos and
user CI runs without tokens.

    >>> from runner.simulator import SimulatorConfig, start_simulator
    >>> with start_simulator(SimulatorConfig(latency_s=0.05)) as sim:   # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")

Modules: `config` (SimulatorConfig, --rules files), `rules` (the job file's `simulator:` block),
`replies` (what the model says), `grading` (the default answer to a `judge` grading request: the
rubric's quoted phrases found in the reply decide verdict, score and label), `embeddings`
(`/v1/embeddings`: a hashed bag of words, so cosine follows shared words), `words` (how both see
a text), `structured` (replies valid for a requested JSON schema),
`logprobs`, `threads` and `runs` (the Assistants objects and run lifecycle), `assistants`,
`conversations`, `responses`, `chat`, `models` (routes), `streaming` (run events),
`response_events` (the resumable Responses stream), `http` (auth, limits, faults, body checks,
errors, stats around every route), `schemas` (OpenAI's schemas, shipped in `openapi/`), `strict`
(request bodies against them), `audit` (answers against them), `ratelimits`, `faults`, `stats`,
`pagination`, `app`, `server`.

Besides the three protocols it serves `/v1/models`, `/v1/embeddings`, `/v1/files` and
`/v1/batches`. It plays a grading model too: rules match grading prompts like any message, and a
grading request no rule answers gets the deterministic default grading policy of `grading`.

Strict like OpenAI: request bodies are validated against OpenAI's request schemas (400 with
OpenAI's `code` and `param`), unknown models get 404 `model_not_found`, bodies over
`max_body_bytes` get 413 and prompts over a model's context window 400 `context_length_exceeded`.
"""

from typing import TYPE_CHECKING, Any

from runner.simulator.config import SimulatorConfig, load_rules
from runner.simulator.rules import Rule, SimulatorRules

if TYPE_CHECKING:
    from runner.simulator.server import RunningSimulator, start_simulator


def __getattr__(name: str) -> Any:
    # The server (Starlette, uvicorn) loads only when a simulator starts: every `runner` command
    # imports this package for its config types, and should start fast.
    if name in ("RunningSimulator", "start_simulator"):
        from runner.simulator import server

        return getattr(server, name)
    raise AttributeError(name)


__all__ = ["Rule", "RunningSimulator", "SimulatorConfig", "SimulatorRules", "load_rules", "start_simulator"]
