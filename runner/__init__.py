"""assistant-runner: scripted conversations against OpenAI-style assistants, at scale.

The flow (see README): a job file is loaded and validated (`runner.jobfile`), expanded into
conversation tasks (`runner.tasks`), carried through a wire protocol (`runner.backends`) under a
shared rate limit (`runner.limits`), queued on RQ (`runner.queue`), and written down as one
transcript record per conversation (`runner.transcripts`).
"""

__version__ = "0.1.0"
