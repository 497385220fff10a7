"""How long a long loop will take, measured on its first steps (printed once, before the long work)."""

from __future__ import annotations

import time

__all__ = ["Eta", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.4 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Eta:
    """``eta.step(done)`` after each step; it returns one line, once, when ``after`` steps have been timed
    (the first step, which pays for warm-up, is not timed): the measured pace and the time the remaining steps
    will take at it.

    Args:
        what: the loop's name in the line ("stage 0").
        total: the loop's last step count; start: the step it starts from (a resumed run).
        note: appended to the line (why the pace may change later).
    """

    def __init__(self, what: str, total: int, start: int = 0, *, after: int = 20, note: str = ""):
        self.what, self.total, self.start, self.after, self.note = what, int(total), int(start), int(after), note
        self._t0: float | None = None
        self._done = False

    def step(self, done: int) -> str | None:
        if self._done:
            return None
        if self._t0 is None:  # the first step finished: time from here
            self._t0, self._first = time.perf_counter(), done
            return None
        timed = done - self._first
        if timed < self.after:
            return None
        self._done = True
        pace = (time.perf_counter() - self._t0) / timed
        left = self.total - done
        if left <= 0:
            return None
        return (f"{self.what}: {pace:.3g} s a step over {timed} steps; about {format_duration(pace * left)} for the "
                f"{left} steps left{self.note}")
