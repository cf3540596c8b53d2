"""hetcomp_dist.allocator: after keep_freed_memory, a freed large block stays mapped (the process's
resident memory does not fall back when it is freed), where glibc's default unmaps it. Each case runs in
its own interpreter, so this test process keeps its allocator as it is."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
import numpy as np
from hetcomp_dist import allocator

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

tuned = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
again = allocator.keep_freed_memory() if tuned else False
base = rss_mib()
block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page touched
held = rss_mib()
del block
print(tuned, again, round(held - base), round(rss_mib() - base))
"""


def _probe(mode: str) -> tuple[bool, bool, int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    tuned, again, held, after = out.stdout.split()
    return tuned == "True", again == "True", int(held), int(after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc on Linux only")
def test_keep_freed_memory_keeps_a_freed_block_mapped():
    tuned, again, held, after = _probe("keep")
    assert tuned and again  # applied, and a second call says so without applying it twice
    assert held >= 250 and after >= 250  # the freed 256 MiB stay resident for the next allocation
    _, _, held, after = _probe("default")
    assert held >= 250 and after < 50  # glibc's default unmaps it on free
