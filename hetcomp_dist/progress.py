"""Progress lines and peak memory, printed by every stage."""

from __future__ import annotations

import resource
import sys
import time

from hetcomp_dist.storage import redact


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def log(stage: str, msg: str) -> None:
    """One progress line, flushed at once (job logs have no TTY).

    Written to stderr directly rather than through `print`: inside a Ray Train worker, `print` is
    patched to also log through Train's root logger, whose console handler writes the line again.
    Credentials in the URIs it names are redacted (`storage.redact`).
    """
    sys.stderr.write(f"[{stage}] {redact(msg)} | peak_rss={peak_rss_gib():.2f}GiB\n")
    sys.stderr.flush()


class Progress:
    """Counts rows/users processed and prints a rate at most every `every_s` seconds.

    Args:
        stage: name printed in front of each line.
        total: expected count, or None when unknown.
        unit: what is counted ("users", "rows").
        every_s: minimum seconds between two lines.
    """

    def __init__(self, stage: str, total: int | None = None, unit: str = "users", every_s: float = 5.0):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.done = 0
        self.t0 = self._last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def close(self) -> float:
        """Prints the final line; returns the rate (units per second)."""
        return self._print(time.perf_counter())

    def _print(self, now: float) -> float:
        rate = self.done / max(now - self.t0, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        log(self.stage, f"{self.done}{of} {self.unit} ({rate:,.0f} {self.unit}/s, {now - self.t0:.1f}s)")
        return rate
