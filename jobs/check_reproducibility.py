"""Do the teachers' exports depend on the host? The six teachers trained on the built-in synthetic data
under several settings, each export compared user by user with the first one's; one JSON line.

    python jobs/check_reproducibility.py [--workdir DIR] [--variants base,rerun,threads2,avx2] [key=value ...]

Variants (each its own RUN and process tree):
- base, rerun: the default settings twice (a teacher trains on one torch thread per whole CPU of its
  actor, `teachers.num_cpus` 0.3 -> 1);
- threads2: `teachers.num_cpus=2`, so two torch threads per teacher;
- avx2: kernels for AVX2 wherever a library lets the environment choose them (torch's ATen, MKL,
  oneDNN, FAISS, OpenBLAS), as on a host without AVX-512.
`same_lists[teacher][variant]` is, per state E1..E4, the share of users whose top-K list equals base's;
`environment` is what each variant's manifest recorded. Exit 0 always: it measures, it does not judge.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # a checkout without pip install

AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "FAISS_OPT_LEVEL": "avx2",
    "OPENBLAS_CORETYPE": "Haswell",
}
VARIANTS = {
    "base": ({}, []),
    "rerun": ({}, []),
    "threads2": ({}, ["teachers.num_cpus=2"]),
    "avx2": (AVX2, []),
}
# short trainings with four snapshots each (the demo preset's teacher settings)
SHORT = [
    "teachers.max_epochs=20",
    "teachers.eval_every=5",
    "teachers.snapshot_every=5",
    "teachers.patience=2",
]


def _cli(args: list[str], env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "hetcomp_dist", *args, "--log-level", "WARNING"]
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    # the commands' own output goes to stderr: stdout ends with this job's one JSON line
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)


def _lists(run: str, name: str, state: int) -> list[list[int]]:
    from hetcomp_dist.data.dataset import load_manifest, read_lists
    from hetcomp_dist.layout import RunLayout

    m = load_manifest(run)
    csr = read_lists(RunLayout(run).teacher_state(name, state), "items", 0, m["n_users"], m)
    return [csr.row(u).tolist() for u in range(csr.n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="", help="where the runs go (default: a temporary folder)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    ap.add_argument("overrides", nargs="*", help="key=value for every variant")
    args = ap.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or names[:1] != ["base"]:
        ap.error(f"--variants: start with base, choose from {', '.join(VARIANTS)} (got {args.variants})")
    from hetcomp_dist import storage
    from hetcomp_dist.layout import RunLayout

    work = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="hcrepro-"))
    runs = {}
    for v in names:
        env, extra = VARIANTS[v]
        runs[v] = os.path.join(work, v)
        _cli(["synth", "--run", runs[v]])
        _cli(["teachers", "--run", runs[v], *SHORT, *extra, *args.overrides], env)
        print(f"[check_reproducibility] {v}: trained", file=sys.stderr)
    teachers = storage.read_manifest(RunLayout(runs["base"]).teachers)["names"]
    same, environment = {}, {}
    for t in teachers:
        base = [_lists(runs["base"], t, e) for e in range(1, 5)]
        for v in names[1:]:
            other = [_lists(runs[v], t, e) for e in range(1, 5)]
            same.setdefault(t, {})[v] = [
                round(sum(a == b for a, b in zip(x, y)) / max(1, len(x)), 4) for x, y in zip(base, other)
            ]
    for v in names:
        env = storage.read_manifest(RunLayout(runs[v]).teacher(teachers[0]))["environment"]
        environment[v] = {"threads": env.get("threads"), "isa": env.get("torch_cpu_capability"), **env["env"]}
    print(json.dumps({"same_lists": same, "environment": environment, "workdir": work}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
