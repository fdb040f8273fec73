"""The one exception tree of assistant-runner.

Library code raises these; only the CLI turns them into a message and an exit code::

    RunnerError                      exit 1 unless a subclass says otherwise
    ├── UsageError                   exit 2  bad option values, missing files
    │   ├── UnknownBatchError        exit 2  a batch id that this Redis does not hold
    │   ├── MissingKeyError          exit 2  OPENAI_API_KEY is not set
    │   └── AssistantConflictError   exit 2  a same-named assistant the runner did not create
    ├── JobFileError                 exit 2  an invalid job file (carries every problem found)
    ├── BackendError                 exit 1  the API answered in a way we cannot use
    │   ├── FatalAPIError            exit 3  authentication rejected or quota exhausted: stop everything
    │   └── ServerUnavailableError   exit 3  the API could not be reached to prepare the run
    ├── QueueError                   exit 3  Redis unreachable
    │   └── LeaseLostError           exit 3  a worker's conversation was fenced (lease lost, batch aborted)
    └── SimulatorError               exit 3  the built-in simulator could not start

Messages are meant for users and never contain an API key or a password.
"""

from __future__ import annotations

from dataclasses import dataclass


class RunnerError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code: int = 1


class UsageError(RunnerError):
    exit_code = 2


class UnknownBatchError(UsageError):
    """Like a missing file: the batch id names nothing on this Redis (mistyped, or expired)."""


class AssistantConflictError(UsageError):
    """A job assistant's name is taken by an assistant the runner did not create for this job;
    nothing was changed, and the message says how to resolve it (`id:`, a new name, `adopt: true`)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a job file (or a file it refers to), located by file and line."""

    path: str
    line: int | None
    where: str
    what: str

    def __str__(self) -> str:
        line = "" if self.line is None else f"{self.line}:"
        where = f" {self.where}:" if self.where else ""
        return f"{self.path}:{line}{where} {self.what}"


class JobFileError(RunnerError):
    """A job file that does not validate; holds every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class MissingKeyError(UsageError):
    """No OPENAI_API_KEY: nothing can be sent (`runner run` adds the `--simulate` hint)."""


class BackendError(RunnerError):
    """The server answered in a way that cannot be retried or used."""


class FatalAPIError(BackendError):
    """401/403 or insufficient quota: retrying cannot help and nothing more should be sent."""

    exit_code = 3


class ServerUnavailableError(BackendError):
    """The API stayed unreachable (or kept failing) through every retry before anything could run."""

    exit_code = 3


class QueueError(RunnerError):
    exit_code = 3


class LeaseLostError(QueueError):
    """A worker may not go on with a conversation: its lease was lost (another worker runs it
    now), its batch was aborted, or Redis stayed away too long. Nothing more is sent for it."""


class SimulatorError(RunnerError):
    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with what the user needs to know (where the partial output is, how to
    finish). A KeyboardInterrupt, not a RunnerError: whatever catches Ctrl-C catches it."""
