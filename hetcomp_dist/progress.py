"""Progress lines and peak memory, through the standard `logging` module (logger ``hetcomp_dist``).

The logger has its own handler and does not propagate: inside a Ray Train worker, `print` and the root
logger are patched to log through Train's handlers, which would print every line twice. The level comes
from `set_level` (the commands' ``--log-level``), or in a worker process from ``HETCOMP_LOG_LEVEL``,
which `set_level` exports so that the Ray workers it starts inherit it.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time

from hetcomp_dist.storage import redact

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV = "HETCOMP_LOG_LEVEL"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (job logs have no TTY; tests capture it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # noqa: D401 - the logging API's attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _logger() -> logging.Logger:
    logger = logging.getLogger("hetcomp_dist")
    if not logger.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(os.environ.get(ENV, "INFO"))
    return logger


def set_level(level: str) -> None:
    """Sets the level of every progress line (DEBUG, INFO, WARNING, ERROR), here and in Ray workers
    started from this process."""
    os.environ[ENV] = level.upper()
    _logger().setLevel(level.upper())


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def log(stage: str, msg: str, level: int = logging.INFO) -> None:
    """One progress line: ``[stage] msg | peak_rss=...``; credentials in the URIs it names are redacted
    (`storage.redact`)."""
    logger = _logger()
    if logger.isEnabledFor(level):
        logger.log(level, f"[{stage}] {redact(msg)} | peak_rss={peak_rss_gib():.2f}GiB")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Counts rows/users processed and prints a rate (and an ETA when the total is known) at most every
    `every_s` seconds.

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
        return self._print(time.perf_counter(), final=True)

    def _print(self, now: float, final: bool = False) -> float:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total:,}" if self.total is not None else ""
        eta = ""
        if self.total is not None and not final and 0 < self.done < self.total:
            eta = f", ETA {_duration((self.total - self.done) / rate)}"
        log(self.stage, f"{self.done:,}{of} {self.unit} ({rate:,.0f} {self.unit}/s, {elapsed:.1f}s{eta})")
        return rate
