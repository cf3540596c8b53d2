"""What a tree of processes costs, read from Linux's /proc by a background thread (the scale bench's meter).

`TreeSampler` samples every descendant of a root process (by default this one) every `period_s`: CPU
seconds (utime + stime of /proc/<pid>/stat), each process's peak resident memory (VmHWM of
/proc/<pid>/status, the kernel's own high-water mark, so a peak between two samples is not missed),
the tree's summed resident memory, the bytes its processes had written to storage (write_bytes of
/proc/<pid>/io) and the whole machine's used memory (MemTotal - MemAvailable of /proc/meminfo, other
users' processes included). A window (`open_window` .. `close_window`) reports what happened in it.

What it cannot see, so every figure but the machine's is a lower bound: a process that lived less than
one period, and the CPU and writes of a process's last period before it exited (its last sample is
kept). Run the work as child processes that start their own Ray (`ray.init()` starts GCS, raylet and
workers as their descendants), so every process of it is in the tree.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GIB = 2**30


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, start time in clock ticks since boot, CPU ticks) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(rest[1]), int(rest[19]), int(rest[11]) + int(rest[12])


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in keys:
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def _write_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_used_bytes() -> int:
    """MemTotal - MemAvailable: what the machine's processes (all of them) hold."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, value = line.partition(":")
            info[name] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def _uptime_ticks() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * CLOCK_TICKS)


def descendants(root: int) -> dict[tuple[int, int], int]:
    """{(pid, start ticks): CPU ticks} of every live descendant of `root` (not `root` itself)."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            stats[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[(pid, stats[pid][1])] = stats[pid][2]
        todo.extend(children.get(pid, []))
    return out


@dataclass
class Window:
    """What the tree did between `TreeSampler.open_window` and `close_window` (filled by the samples)."""

    start_ticks: int
    t0: float = field(default_factory=time.perf_counter)
    cpu: dict = field(default_factory=dict)  # (pid, start) -> [ticks at first sight or 0, last ticks]
    written: dict = field(default_factory=dict)  # (pid, start) -> [bytes at first sight or 0, last bytes]
    hwm: dict = field(default_factory=dict)  # (pid, start) -> VmHWM bytes
    tree_peak: int = 0
    machine_peak: int = 0

    def result(self) -> dict:
        """{"cpu_s", "peak_rss_gib" (largest process), "tree_peak_rss_gib", "machine_peak_gib",
        "io_write_gib", "processes", "seconds"}."""
        return {
            "cpu_s": sum(last - first for first, last in self.cpu.values()) / CLOCK_TICKS,
            "peak_rss_gib": max(self.hwm.values(), default=0) / GIB,
            "tree_peak_rss_gib": self.tree_peak / GIB,
            "machine_peak_gib": self.machine_peak / GIB,
            "io_write_gib": sum(last - first for first, last in self.written.values()) / GIB,
            "processes": len(self.cpu),
            "seconds": time.perf_counter() - self.t0,
        }


class TreeSampler:
    """Samples the descendants of `root` every `period_s` seconds in a daemon thread.

    Args:
        root: the root process (its own costs are not counted); default this process.
        period_s: seconds between samples.
    """

    def __init__(self, root: int | None = None, period_s: float = 0.5) -> None:
        self.root, self.period_s = root or os.getpid(), period_s
        self._window: Window | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def open_window(self) -> Window:
        """Starts a window: processes already running count from their CPU and writes now."""
        w = Window(_uptime_ticks())
        with self._lock:
            self._window = w
            self._sample(w)
        return w

    def close_window(self) -> dict:
        """Takes a last sample and returns the window's `Window.result`."""
        with self._lock:
            w, self._window = self._window, None
            self._sample(w)
        return w.result()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            with self._lock:
                if self._window is not None:
                    self._sample(self._window)

    def _sample(self, w: Window) -> None:
        tree_rss = 0
        for key, ticks in descendants(self.root).items():
            pid, start = key
            new = start >= w.start_ticks  # started inside the window: everything it did counts
            first = w.cpu.setdefault(key, [0 if new else ticks, ticks])
            first[1] = ticks
            written = _write_bytes(pid)
            io = w.written.setdefault(key, [0 if new else written, written])
            io[1] = max(io[1], written)
            mem = _status_kib(pid, ("VmRSS", "VmHWM"))
            w.hwm[key] = max(w.hwm.get(key, 0), mem.get("VmHWM", 0) * 1024)
            tree_rss += mem.get("VmRSS", 0) * 1024
        w.tree_peak = max(w.tree_peak, tree_rss)
        w.machine_peak = max(w.machine_peak, machine_used_bytes())
