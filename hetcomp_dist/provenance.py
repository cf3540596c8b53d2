"""What produced an artefact: library versions, thread counts, device and CPU instruction set.

Every manifest records it (`storage.write_manifest`), because each of these can change results in
the last bits: a BLAS or oneDNN kernel picked for AVX-512 instead of AVX2 sums in another order, so
does a matrix product split over 2 threads instead of 1, and small float differences grow through
training. Reads only what is already loaded: a stage that never imported torch reports no torch
threads, and recording provenance imports nothing heavy.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from importlib import metadata

LIBRARIES = ("torch", "numpy", "faiss-cpu", "numba", "ray", "pyarrow", "implicit")
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "FAISS_OPT_LEVEL",
    "OPENBLAS_CORETYPE",
)


@functools.lru_cache(maxsize=1)
def _static() -> dict:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return {
        "python": platform.python_version(),
        "libraries": versions,
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "host": platform.node(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment() -> dict:
    """The library versions, thread settings, device and CPU instruction set of this process."""
    env = dict(_static())
    env["env"] = {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}
    threads: dict = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        threads["torch"] = torch.get_num_threads()
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    numba = sys.modules.get("numba")
    if numba is not None:
        threads["numba"] = numba.get_num_threads()
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        threads["faiss"] = faiss.omp_get_max_threads()
        env["faiss_build"] = faiss.get_compile_options().strip()
    env["threads"] = threads
    return env
