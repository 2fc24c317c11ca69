"""The retry schedule every loop shares: exponential, capped, jittered."""

from __future__ import annotations

import random

from redis_rpc._backoff import Backoff


def test_ceiling_doubles_up_to_the_cap():
    """The longest wait doubles with each failure and stops at the cap."""
    backoff, ceilings = Backoff(start=0.1, cap=1.0), []
    for _ in range(6):
        ceilings.append(backoff.ceiling)
        backoff = backoff.after_failure()
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_delay_is_drawn_between_half_and_all_of_the_ceiling():
    """Each wait lies between half the ceiling and the ceiling."""
    rng = random.Random(1)
    backoff = Backoff(start=0.1, cap=5.0).after_failure().after_failure()
    delays = [backoff.delay(rng) for _ in range(1000)]
    assert min(delays) >= 0.2
    assert max(delays) <= 0.4


def test_delays_differ_between_retries():
    """Two loops on the same schedule do not retry in lockstep."""
    backoff = Backoff()
    assert len({backoff.delay() for _ in range(20)}) > 1


def test_a_long_outage_does_not_overflow():
    """Thousands of failures in a row keep the wait at the cap."""
    backoff = Backoff(start=0.1, cap=5.0, failures=10_000)
    assert backoff.ceiling == 5.0
    assert 2.5 <= backoff.delay() <= 5.0


def test_a_new_schedule_starts_over():
    """Backoff() after a success starts from the shortest wait again."""
    assert Backoff().failures == 0
    assert Backoff().ceiling == 0.1
