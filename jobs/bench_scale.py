"""Benchmark: the whole pipeline at 100k, 300k and 1M users on this machine -- each stage's cost and growth.

    python jobs/bench_scale.py [--users 100000,300000,1000000] [--items N,...] [--config FILE]
                               [--workdir DIR] [--cpus N] [--k K] [--keep] [key=value ...]
    python jobs/bench_scale.py --tiny          # CI: 2,000 and 4,000 users, the same code paths, lighter
                                               # training (TINY: narrower teachers, a 10-epoch student)

For every size -- synthetic data of `users` users and users / 10 items (``--items`` to choose), the
settings of ``hetcomp_dist/configs/scale.yaml`` (``--config``) -- the real pipeline code paths, each
stage in a child process of its own that starts its own local Ray, so that each stage's processes, and
only they, are measured (Ray's start and the imports fall outside the stage's wall time):

  data       the data stage of a synthetic run (`pipeline.ensure_data`: generate, split, write shards)
  teachers   the six teachers, trained and exported by their Ray actors (`train_teachers`)
  ensemble   the ensemble's metrics over the E4 lists (`ensemble_report`); item popularity's valid R@50
             beside it (the quality check, not timed)
  knowledge  knowledge round 0 (`build_round0`)
  student    the HetComp MF student (`train_student`, Ray Train) with its DKC rounds; the rounds are also
             reported alone, as `dkc`, from their manifests (wall and peak memory; CPU inside the student)
  recommend  every user's top-K (`serving.recommend.recommend`)

Per stage and size: wall s of the stage call, users/s, CPU s, peak RSS of the largest process, of the
stage's process tree and of the whole machine (other users' processes too: `machine_baseline_gib` is the
machine before the bench), bytes the stage left under RUN and bytes its processes wrote to storage; per
stage the exponent b of wall ∝ users^b (least squares on log-log over the sizes run). CPU s and memory
are sampled from /proc (`hetcomp_dist.procstats`; the CPU figure is the larger of that sample and
`RUSAGE_CHILDREN`, both lower bounds), each process's peak from the kernel's high-water mark.

Quality at every size: the ensemble's and the student's valid R@50 against item popularity's (the
package's evaluation of 1-d popularity vectors); with an approximate teachers' index, each teacher's
lowest recall@K against exact over its states, on `teachers.export_recall_users` users (>= 0.95 wanted),
and the search each state exported with (the scale config sizes it on another sample of as many users:
`teachers.export_recall_target`).

Bad input, before anything runs: a config that cannot fit a size (a shard above its users, a batch above
its data: `hetcomp_dist.scale.check_fits`). RAY_ADDRESS is ignored: each stage starts a Ray of its own.

Ends with ONE JSON line: {"wall_s": {size: s}, "stages": {stage: {"wall_s": {size: s}, "users_per_s",
"cpu_s", "peak_rss_gib", "tree_peak_rss_gib", "bytes_written", "exponent": b}}, "machine_peak_rss_gib":
{size: GiB}, "quality": {size: {...}}, "targets": {...}, ...} (sizes as strings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # a checkout without pip install

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from hetcomp_dist.config import load_config  # noqa: E402
from hetcomp_dist.progress import log  # noqa: E402

STAGE = "bench_scale"
STAGES = ("data", "teachers", "ensemble", "knowledge", "student", "recommend")
RAY_STAGES = ("teachers", "knowledge", "student", "recommend")
SCALE_CONFIG = os.path.join(REPO, "hetcomp_dist", "configs", "scale.yaml")
RESULT = "BENCH_STAGE_RESULT "  # the prefix of a stage child's result line on stdout
TINY_USERS = "2000,4000"
# --tiny: the scale config's code paths on CI-sized data (several shards, batches within the data) with
# lighter training: teachers of width 16, an item-AE hashed to 512 buckets (still fewer than the users:
# the hashed input path), the autoencoders' normalisers sampled from 100 columns (fewer than the items
# and the users: the sampled path), the student 10 epochs with DKC rounds at epochs 4 and 8 (two rounds,
# as at scale)
TINY = (
    "data.shard_size=1000",
    "eval.batch_size=1024",
    "teachers.batch_size=1024",
    "teachers.ae.batch_size=256",
    "teachers.iae.batch_size=64",
    "teachers.export_recall_users=200",
    "teachers.dim=16",
    "teachers.iae_hash_buckets=512",
    "teachers.ae_decoder_samples=100",
    "teachers.iae_decoder_samples=100",
    "student.batch_size=1024",
    "student.max_epochs=10",
    "knowledge.period=4",
)
# the targets for the 1M-user run on a 2-core, 24 GiB machine
TARGETS = {"wall_min": 120.0, "process_gib": 6.0, "machine_gib": 20.0, "exponent": 1.15, "recall": 0.95}


# ------------------------------------------------------------------------------- one stage (child)
def _stage_data(cfg, args) -> dict:
    from hetcomp_dist.pipeline import ensure_data

    m = ensure_data(cfg)
    return {k: m[k] for k in ("n_users", "n_items", "n_train", "n_valid", "n_test")}


def _stage_teachers(cfg, args) -> dict:
    from hetcomp_dist import storage
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.teachers.actors import train_teachers

    train_teachers(cfg.run, cfg)
    out = {}
    for name in cfg.teachers.names:
        m = storage.read_json(RunLayout(cfg.run).teacher_metrics(name))
        recalls = [s["export"]["recall_vs_exact"] for s in m["states"] if "recall_vs_exact" in s["export"]]
        out[name] = {
            "wall_s": m["wall_s"],
            "train_s": m["train_s"],
            "export_s": m["export_s"],
            "cpu_s": m["cpu_s"],
            "train_cpu_s": m.get("train_cpu_s"),
            "export_cpu_s": m.get("export_cpu_s"),
            "peak_rss_gib": m["peak_rss_gib"],
            "valid_R@50": m["states"][-1]["valid"]["R@50"],
            "recall_vs_exact": min(recalls) if recalls else None,
            # per state E1..E4: the search it exported with (IVF nprobe of nlist, sized on a sample when
            # teachers.export_recall_target > 0; {"exact": true}, or on NeuMF's candidate path
            # {"flat_candidates": true}, past teachers.export_exact_share)
            "search_breadth": [s["export"].get("search_breadth") for s in m["states"]],
        }
    return {"teachers": out}


def _stage_ensemble(cfg, args) -> dict:
    import numpy as np

    from hetcomp_dist.data.dataset import load_manifest, load_range
    from hetcomp_dist.evaluation.evaluate import evaluate_embeddings
    from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report

    t0 = time.perf_counter()
    ens = ensemble_report(cfg.run, cfg)
    wall = time.perf_counter() - t0
    # item popularity as 1-d vectors (score = train count), through the exact norm-pruned search
    data = load_manifest(cfg.run)
    counts = np.zeros(data["n_items"], np.float32)
    for lo in range(0, data["n_users"], data["shard_size"]):
        hi = min(lo + data["shard_size"], data["n_users"])
        counts += np.bincount(load_range(cfg.run, "train", lo, hi, data).items, minlength=data["n_items"])
    pop = evaluate_embeddings(
        cfg.run,
        np.ones((data["n_users"], 1), np.float32),
        counts[:, None],
        "ip",
        dataclasses.replace(cfg.eval, index="blocked"),
        ("valid",),
        distributed=False,
        where="popularity",
    )
    return {
        "wall_s": wall,
        "ensemble_valid_R@50": ens["ensemble"]["valid"]["R@50"],
        "popularity_valid_R@50": pop["valid"]["R@50"],
        "popularity_s": time.perf_counter() - t0 - wall,
    }


def _stage_knowledge(cfg, args) -> dict:
    from hetcomp_dist.knowledge.rounds import build_round0

    m = build_round0(cfg.run, cfg)
    return {"distributed": m["distributed"], "task_peak_rss_gib": m["task_peak_rss_gib"]}


def _stage_student(cfg, args) -> dict:
    from hetcomp_dist import storage
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.student.trainer import train_student

    scfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, model="mf", method="hetcomp"))
    res = train_student(cfg.run, scfg)
    layout = RunLayout(cfg.run)
    rounds, r = [], 1
    folder = layout.student_rounds(layout.student("hetcomp", "mf"))
    while (m := storage.read_manifest(layout.round(r, folder))) is not None:
        rounds.append({k: m[k] for k in ("round", "epoch", "wall_s", "peak_rss_gib", "task_peak_rss_gib")})
        r += 1
    return {
        "valid_R@50": res["valid"]["R@50"],
        "test_R@50": res["test"]["R@50"],
        "best_epoch": res["best_epoch"],
        "epochs": res["epochs"],
        "dkc_rounds": rounds,
    }


def _stage_recommend(cfg, args) -> dict:
    from hetcomp_dist.serving.recommend import Request, recommend

    m = recommend(cfg.run, cfg, Request(student="hetcomp-mf", k=args.k))
    return {k: m[k] for k in ("n_users", "distributed", "worker_peak_rss_gib")}


STAGE_FUNCTIONS = {
    "data": _stage_data,
    "teachers": _stage_teachers,
    "ensemble": _stage_ensemble,
    "knowledge": _stage_knowledge,
    "student": _stage_student,
    "recommend": _stage_recommend,
}


def run_stage(args) -> int:
    """The child: one stage on RUN, its own Ray started (and stopped) outside the timed call."""
    cfg = load_config(args.config, [f"run={args.run}", *args.overrides])
    if args.stage in RAY_STAGES:
        import ray

        from hetcomp_dist.resources import check_shared_storage, cluster_view

        ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False)
        check_shared_storage(cfg.run, cluster_view())
    t0 = time.perf_counter()
    out = STAGE_FUNCTIONS[args.stage](cfg, args)
    wall = out.pop("wall_s", None) if args.stage == "ensemble" else None
    out = {"wall_s": wall if wall is not None else time.perf_counter() - t0, **out}
    if args.stage in RAY_STAGES:
        import ray

        ray.shutdown()
    out["self_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(RESULT + json.dumps(out), flush=True)
    return 0


# ------------------------------------------------------------------------------- the sizes (parent)
def _tree_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _child_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure_stage(stage: str, run: str, args, overrides: list[str], sampler) -> dict:
    """Runs one stage as a child process and measures it; raises RuntimeError when the child fails."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray's workers import the package from this checkout too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--run", run, "--config", args.config]
    cmd += ["--cpus", str(args.cpus), "--k", str(args.k), *overrides]
    bytes0, cpu0, t0 = _tree_bytes(run), _child_cpu_s(), time.perf_counter()
    sampler.open_window()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout:  # the stage's log goes to stderr; anything else on stdout is passed on
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT) :])
        else:
            sys.stderr.write(line)
    proc.wait()
    win = sampler.close_window()
    if proc.returncode or result is None:
        raise RuntimeError(f"stage {stage} on {run} failed (exit {proc.returncode}); its log is above")
    return {
        **result,
        "cpu_s": max(win["cpu_s"], _child_cpu_s() - cpu0),
        "peak_rss_gib": max(win["peak_rss_gib"], result["self_peak_rss_gib"]),
        "tree_peak_rss_gib": win["tree_peak_rss_gib"],
        "machine_peak_gib": win["machine_peak_gib"],
        "bytes_written": _tree_bytes(run) - bytes0,
        "io_write_gib": win["io_write_gib"],
        "processes": win["processes"],
        "process_wall_s": time.perf_counter() - t0,
    }


def one_size(users: int, items: int, args, sampler) -> dict:
    run = os.path.join(args.workdir, f"users-{users}")
    shutil.rmtree(run, ignore_errors=True)  # every stage computes: nothing is skipped as up to date
    overrides = [f"synth.users={users}", f"synth.items={items}", *args.all_overrides]
    t0 = time.perf_counter()
    stages = {}
    for stage in STAGES:
        log(STAGE, f"{users:,} users: stage {stage} ...")
        stages[stage] = measure_stage(stage, run, args, overrides, sampler)
        s = stages[stage]
        log(
            STAGE,
            f"{users:,} users: {stage} {s['wall_s']:.1f}s wall, {s['cpu_s']:.1f} CPU s, "
            f"largest process {s['peak_rss_gib']:.2f} GiB, machine {s['machine_peak_gib']:.2f} GiB",
        )
    wall = time.perf_counter() - t0
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return {"users": users, "items": items, "wall_s": wall, "stages": stages}


def summarise(results: list[dict], baseline_gib: float, args) -> dict:
    from hetcomp_dist.scale import exponent

    sizes = [r["users"] for r in results]
    key = {r["users"]: str(r["users"]) for r in results}
    stages = {}
    for stage in STAGES:
        rows = {key[r["users"]]: r["stages"][stage] for r in results}
        walls = [r["stages"][stage]["wall_s"] for r in results]
        stages[stage] = {
            "wall_s": {k: round(s["wall_s"], 2) for k, s in rows.items()},
            "users_per_s": {k: round(int(k) / max(s["wall_s"], 1e-9), 1) for k, s in rows.items()},
            "cpu_s": {k: round(s["cpu_s"], 1) for k, s in rows.items()},
            "peak_rss_gib": {k: round(s["peak_rss_gib"], 3) for k, s in rows.items()},
            "tree_peak_rss_gib": {k: round(s["tree_peak_rss_gib"], 3) for k, s in rows.items()},
            "machine_peak_gib": {k: round(s["machine_peak_gib"], 3) for k, s in rows.items()},
            "bytes_written": {k: s["bytes_written"] for k, s in rows.items()},
            "io_write_gib": {k: round(s["io_write_gib"], 3) for k, s in rows.items()},
            "exponent": _round(exponent(sizes, walls)),
        }
    # the DKC rounds inside the student: mean round wall, from the round manifests
    dkc = {key[r["users"]]: r["stages"]["student"]["dkc_rounds"] for r in results}
    mean = {k: sum(x["wall_s"] for x in v) / len(v) for k, v in dkc.items() if v}
    if mean:
        stages["dkc"] = {
            "rounds": {k: len(v) for k, v in dkc.items()},
            "wall_s": {k: round(v, 2) for k, v in mean.items()},
            "users_per_s": {k: round(int(k) / max(v, 1e-9), 1) for k, v in mean.items()},
            "peak_rss_gib": {k: round(max(x["peak_rss_gib"] for x in v), 3) for k, v in dkc.items() if v},
            "exponent": _round(exponent([int(k) for k in mean], list(mean.values()))),
            "note": "inside the student stage (its CPU and bytes are the student's)",
        }
    # where the teachers stage's time went, per teacher (six actors share the cores: their walls overlap)
    stages["teachers"]["per_teacher"] = {
        key[r["users"]]: {
            name: {
                f: round(t[f], 1)
                for f in ("wall_s", "train_s", "export_s", "cpu_s", "train_cpu_s", "export_cpu_s")
                if t.get(f) is not None
            }
            for name, t in r["stages"]["teachers"]["teachers"].items()
        }
        for r in results
    }
    quality = {}
    for r in results:
        st = r["stages"]
        pop = st["ensemble"]["popularity_valid_R@50"]
        ens, stu = st["ensemble"]["ensemble_valid_R@50"], st["student"]["valid_R@50"]
        recall = {n: t["recall_vs_exact"] for n, t in st["teachers"]["teachers"].items()}
        measured = [v for v in recall.values() if v is not None]
        quality[key[r["users"]]] = {
            "popularity_valid_R@50": round(pop, 4),
            "ensemble_valid_R@50": round(ens, 4),
            "student_valid_R@50": round(stu, 4),
            "teachers_valid_R@50": {
                n: round(t["valid_R@50"], 4) for n, t in st["teachers"]["teachers"].items()
            },
            "ensemble_beats_popularity": ens > pop,
            "student_beats_popularity": stu > pop,
            "export_recall": {n: _round(v) for n, v in recall.items()},
            "export_recall_min": _round(min(measured)) if measured else None,
            "export_search": {n: t.get("search_breadth") for n, t in st["teachers"]["teachers"].items()},
        }
    largest = results[-1]
    peaks = [s["peak_rss_gib"] for s in largest["stages"].values()]
    exps = [s["exponent"] for s in stages.values() if s.get("exponent") is not None]
    recalls = [q["export_recall_min"] for q in quality.values() if q["export_recall_min"] is not None]
    targets = {
        "largest_users": largest["users"],
        "wall_min": round(largest["wall_s"] / 60, 1),
        "wall_ok": largest["wall_s"] / 60 <= TARGETS["wall_min"],
        "largest_process_gib": round(max(peaks), 3),
        "process_ok": max(peaks) <= TARGETS["process_gib"],
        "machine_gib": round(max(s["machine_peak_gib"] for s in largest["stages"].values()), 3),
        "machine_ok": max(s["machine_peak_gib"] for s in largest["stages"].values())
        <= TARGETS["machine_gib"],
        "max_exponent": _round(max(exps)) if exps else None,
        "exponent_ok": (max(exps) <= TARGETS["exponent"]) if exps else None,
        "quality_ok": all(
            q["ensemble_beats_popularity"] and q["student_beats_popularity"] for q in quality.values()
        ),
        "recall_ok": (min(recalls) >= TARGETS["recall"]) if recalls else None,
        "limits": TARGETS,
    }
    return {
        "bench": "scale",
        "sizes": sizes,
        "items": {key[r["users"]]: r["items"] for r in results},
        "cpus": args.cpus,
        "config": os.path.relpath(args.config, REPO) if args.config.startswith(REPO) else args.config,
        "overrides": args.all_overrides,
        "wall_s": {key[r["users"]]: round(r["wall_s"], 1) for r in results},
        # the stages' own calls, without each child's imports and Ray start
        "stages_wall_s": {
            key[r["users"]]: round(sum(s["wall_s"] for s in r["stages"].values()), 1) for r in results
        },
        "stages": stages,
        "machine_peak_rss_gib": {
            key[r["users"]]: round(max(s["machine_peak_gib"] for s in r["stages"].values()), 3)
            for r in results
        },
        "machine_baseline_gib": round(baseline_gib, 3),
        "quality": quality,
        "targets": targets,
    }


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def print_table(out: dict) -> None:
    sizes = [str(s) for s in out["sizes"]]
    head = f"{'stage':<10}" + "".join(f"{s + ' users':>26}" for s in sizes) + f"{'b':>7}"
    print(head)
    print(f"{'':<10}" + "".join(f"{'wall s / CPU s / GiB':>26}" for _ in sizes))
    for stage, st in out["stages"].items():
        cells = "".join(
            f"{st['wall_s'].get(s, 0):>10.1f} / {st.get('cpu_s', {}).get(s, 0):>6.0f} / "
            f"{st['peak_rss_gib'].get(s, 0):>4.2f}"
            for s in sizes
        )
        b = st.get("exponent")
        print(f"{stage:<10}{cells}{'-' if b is None else f'{b:.2f}':>7}")
    for s in sizes:
        q = out["quality"][s]
        print(
            f"{s} users: {out['wall_s'][s]:.1f}s in all ({out['stages_wall_s'][s]:.1f}s in the stage calls); "
            f"valid R@50 popularity {q['popularity_valid_R@50']:.4f}, ensemble "
            f"{q['ensemble_valid_R@50']:.4f}, student {q['student_valid_R@50']:.4f}; export recall min "
            f"{q['export_recall_min']}; machine peak {out['machine_peak_rss_gib'][s]:.2f} GiB"
        )


def _sizes(users: str, items: str | None) -> tuple[list[int], list[int]]:
    """(user counts, item counts) of --users and --items (default: users / 10); InputError if malformed."""
    from hetcomp_dist.errors import InputError
    from hetcomp_dist.scale import items_for

    try:
        u = [int(x) for x in users.split(",")]
        i = [int(x) for x in items.split(",")] if items else [items_for(x) for x in u]
    except ValueError as e:
        raise InputError("--users/--items", f"not comma-separated integers ({e})") from e
    if len(i) != len(u):
        raise InputError("--items", f"{len(i)} item counts for {len(u)} sizes", "give one per size")
    if min(u + i) < 1:
        raise InputError("--users/--items", "every count must be >= 1")
    return u, i


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="100000,300000,1000000", help="comma-separated user counts")
    ap.add_argument("--items", help="comma-separated item counts, one per size (default: users / 10)")
    ap.add_argument("--config", default=SCALE_CONFIG, help="the scale config (YAML)")
    ap.add_argument("--workdir", default="/tmp/hetcomp-bench-scale", help="where the runs are written")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of each stage's Ray")
    ap.add_argument("--k", type=int, default=100, help="items per user of the recommend stage")
    ap.add_argument("--keep", action="store_true", help="keep each size's run")
    ap.add_argument("--tiny", action="store_true", help=f"CI: --users {TINY_USERS} and the TINY settings")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a stage child
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every size")
    args = ap.parse_args()
    args.config = os.path.abspath(args.config)
    if args.stage:
        return run_stage(args)

    from hetcomp_dist.errors import InputError
    from hetcomp_dist.procstats import TreeSampler, machine_used_bytes
    from hetcomp_dist.scale import check_fits

    sizes = TINY_USERS if args.tiny and args.users == ap.get_default("users") else args.users
    args.all_overrides = [*(TINY if args.tiny else ()), *args.overrides]
    args.workdir = os.path.abspath(args.workdir)
    try:  # every size's config is checked before anything runs
        users, items = _sizes(sizes, args.items)
        for u, i in zip(users, items):
            over = [f"run={args.workdir}", f"synth.users={u}", f"synth.items={i}", *args.all_overrides]
            check_fits(
                load_config(args.config, over), where=f"{os.path.basename(args.config)} at {u:,} users"
            )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    baseline = machine_used_bytes() / 2**30
    sampler = TreeSampler(period_s=0.5).start()
    try:
        results = [one_size(u, i, args, sampler) for u, i in zip(users, items)]
    finally:
        sampler.stop()
    out = summarise(results, baseline, args)
    print_table(out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
