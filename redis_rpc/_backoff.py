"""``Backoff``: how long every retry loop waits after a failure, with jitter.

The consumers, the reply listener and the heartbeat all retry Redis after
an error. Without jitter, every process that lost the same Redis retries
on the same schedule and they all reconnect in lockstep, again and again;
a random part of each delay spreads them out. The delay grows
exponentially from ``start`` up to ``cap``, and each wait is drawn
uniformly between half of it and all of it ("equal jitter"), so a retry
never comes much sooner than planned nor later than the cap.
"""

from __future__ import annotations

import random

import attrs

# Quick enough to ride out a Redis restart, slow enough not to spin. The cap
# bounds how late a loop notices that Redis is back: a second at most, after
# an outage of any length. One attempt a second per loop costs Redis little,
# and the jitter keeps processes from retrying in step.
START = 0.1
CAP = 1.0


@attrs.frozen
class Backoff:
    """The retry schedule after *failures* failures in a row. Immutable.

    ``Backoff()`` is the schedule before any failure; ``after_failure()``
    gives the next one.
    """

    start: float = START
    cap: float = CAP
    failures: int = 0

    @property
    def ceiling(self) -> float:
        """The longest the next wait may be."""
        # min() before the power would overflow for a long outage; cap the exponent.
        return min(self.cap, self.start * 2.0 ** min(self.failures, 64))

    def delay(self, rng: random.Random | None = None) -> float:
        """A wait drawn between half the ceiling and the ceiling."""
        ceiling = self.ceiling
        return (rng or _RANDOM).uniform(ceiling / 2, ceiling)

    def after_failure(self) -> Backoff:
        """The schedule after one more failure."""
        return attrs.evolve(self, failures=self.failures + 1)


# Drawn from the OS, so that processes forked from one parent (gunicorn
# workers) do not share one sequence of "random" delays.
_RANDOM = random.SystemRandom()
