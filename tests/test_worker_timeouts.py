"""Job timeouts in a worker's threads: one watchdog thread raises RQ's timeout in the thread of the
job that ran out of time (as RQ's TimerDeathPenalty does with a timer thread per job)."""

from __future__ import annotations

import threading
import time

from rq.timeouts import JobTimeoutException

from runner.queue.worker import SharedTimerDeathPenalty


def _job(seconds: float, timeout: float, outcome: dict[str, str], name: str) -> None:
    try:
        with SharedTimerDeathPenalty(timeout, JobTimeoutException, job_id=name):
            end = time.monotonic() + seconds
            while time.monotonic() < end:  # bytecode between short sleeps: the exception lands here
                time.sleep(0.01)
        outcome[name] = "finished"
    except JobTimeoutException:  # (its message is RQ's, patched onto the class by the latest job)
        outcome[name] = "timed out"


def test_worker_timeouts_one_watchdog_stops_only_the_jobs_out_of_time() -> None:
    outcome: dict[str, str] = {}
    jobs = [("slow-1", 5.0, 0.3), ("slow-2", 5.0, 0.6), ("quick", 0.2, 5.0), ("in-time", 0.5, 1.0)]
    threads = [threading.Thread(target=_job, args=(s, t, outcome, n)) for n, s, t in jobs]
    for t in threads:
        t.start()
    watchdogs = [t for t in threading.enumerate() if t.name == "runner-job-timeouts"]
    for t in threads:
        t.join(10)
    assert outcome == {
        "slow-1": "timed out",
        "slow-2": "timed out",
        "quick": "finished",
        "in-time": "finished",
    }
    assert len(watchdogs) == 1  # one thread for the four jobs, not a timer each
    assert not SharedTimerDeathPenalty._due  # every penalty fired or was cancelled
