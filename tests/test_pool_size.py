"""`runner run`'s local pool without `--workers`: sized to fill the limit (Little's law), and given
another process when one process's CPU would pace it."""

from __future__ import annotations

from runner.run.queued import PER_PROCESS, PER_PROCESS_RPS, cpu_processes, pool_size


def test_in_flight_follows_littles_law() -> None:
    # 3,000 requests/minute of 3 s turns: 50/s x 3 s x 1.25 headroom in flight.
    processes, per_process = pool_size(6000, 3000, 3.0, None, cores=1)
    assert (processes, per_process) == (1, 188)


def test_a_small_job_is_one_small_process() -> None:
    assert pool_size(3, None, None, None, cores=8) == (1, 3)


def test_a_rate_above_one_process_cpu_gets_more_processes_up_to_the_cores() -> None:
    rpm = 60 * PER_PROCESS_RPS * 3  # three processes' worth of requests per second
    processes, per_process = pool_size(100_000, rpm, 2.0, None, cores=8)
    assert processes == 3
    assert processes * per_process >= rpm / 60 * 2.0  # still enough in flight for the budget
    assert pool_size(100_000, rpm, 2.0, None, cores=2)[0] == 2  # never more than the cores


def test_the_rate_is_what_the_conversations_in_flight_can_reach() -> None:
    # A job capped at 16 conversations of 5 s turns cannot reach 3 processes' rate: one process.
    assert pool_size(10_000, 60 * PER_PROCESS_RPS * 3, 5.0, 16, cores=8) == (1, 16)


def test_many_in_flight_spread_over_processes() -> None:
    processes, per_process = pool_size(100_000, 60_000, 20.0, None, cores=1)
    assert processes > 1 and per_process <= PER_PROCESS


def test_an_assumed_budget_starts_one_process_the_learned_one_may_add() -> None:
    # Nothing stated or learned yet: one process (runner run adds more once the workers learn).
    assert pool_size(100_000, None, None, None, cores=8)[0] == 1
    assert pool_size(100_000, 60 * PER_PROCESS_RPS * 2, None, None, cores=8)[0] == 2


def test_a_binding_limit_needs_no_more_cpu_however_long_turns_wait() -> None:
    # 1,200 requests/minute is 20/s: one process's CPU, even when turns (waiting for budget) take 30 s.
    assert cpu_processes(1200, 750, 30.0, cores=8) == 1
    assert cpu_processes(None, 750, 30.0, cores=8) == 1  # the assumed budget: never more for CPU
    assert cpu_processes(60 * PER_PROCESS_RPS * 4, 1000, 2.0, cores=3) == 3
