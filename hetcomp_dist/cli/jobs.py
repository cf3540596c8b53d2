"""The one command line shared by the ``ray job submit`` entrypoints in ``jobs/``.

Every entrypoint is ``python jobs/<name>.py [--config FILE] [--input PATH --format F] [--run RUN]
[--smoke] [key=value ...]`` and calls `run_job` (or `run_stage_job`) with the one package function it
runs. `run_job` parses the config, joins the Ray cluster the job runs on (plain ``ray.init()``: inside
a job ``RAY_ADDRESS`` is set; with no cluster it starts a local one), refuses a local RUN on a cluster of
several nodes (`check_cluster`), runs the stage, prints where its output landed and turns any failure
into a non-zero exit whose last line is the reason -- so ``ray job submit`` (which exits 1 for a FAILED
job) and the job logs both carry it.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from hetcomp_dist import storage
from hetcomp_dist.config import DATA_FORMATS, Config
from hetcomp_dist.errors import InputError
from hetcomp_dist.progress import log, set_level

# --smoke: tiny synthetic data and short training, so a whole pipeline finishes in a few minutes on a
# laptop (or in CI) while still crossing every stage boundary (several user shards, every teacher,
# DKC rounds, at least two evaluations per model). Applied before the user's own overrides.
SMOKE: tuple[str, ...] = (
    "data.format=synthetic",
    "data.input=",
    "data.shard_size=64",
    "synth.users=160",
    "synth.items=120",
    "synth.mean_interactions=12",
    "synth.max_interactions=30",
    "synth.topics=4",
    "synth.community_size=10",
    "eval.batch_size=64",
    "teachers.dim=8",
    "teachers.batch_size=256",
    "teachers.max_epochs=4",
    "teachers.eval_every=2",
    "teachers.snapshot_every=1",
    "teachers.patience=2",
    "teachers.ae_hidden=16",
    "knowledge.period=2",
    "student.batch_size=256",
    "student.max_epochs=4",
    "student.eval_every=2",
    "student.patience=2",
    "pipeline.students=[mf]",
    "pipeline.methods=[hetcomp]",
)

Stage = Callable[[Config, argparse.Namespace], str]


def parser(description: str) -> argparse.ArgumentParser:
    """The options every job takes; a job adds its own with ``add_arguments``."""
    from hetcomp_dist.cli.main import common_options

    p = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config (local path or s3:// / gs:// URI); default: the paper's values",
    )
    p.add_argument("--input", metavar="PATH", help="interactions: local path or s3:// / gs:// URI")
    p.add_argument("--format", choices=DATA_FORMATS, help="input format")
    p.add_argument(
        "--run",
        "--out",
        dest="run",
        metavar="RUN",
        help="where the run lives (local path, s3:// or gs:// URI)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny synthetic data and short training (and the stages before this one): "
        "a quick end-to-end check",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. student.model=ml teachers.num_cpus=2",
    )
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The typed config: file, the smoke preset, the overrides, then --input/--format/--run verbatim."""
    from hetcomp_dist.cli import run as run_command

    smoke = list(SMOKE) if args.smoke else []
    storage.absolute_args(args)  # in the driver: Ray workers have working directories of their own
    return run_command.config_from_args(
        argparse.Namespace(**{**vars(args), "overrides": smoke + list(args.overrides)})
    )


def init_ray() -> None:
    """Joins the cluster the job runs on, or starts a local Ray when there is none."""
    import ray

    if not ray.is_initialized():
        ray.init()


def check_cluster(cfg: Config) -> None:
    """Refuses, before anything runs, a RUN the cluster's nodes cannot all reach (a local path on a
    cluster of several nodes, or on one that may autoscale to several)."""
    from hetcomp_dist.resources import check_shared_storage, cluster_view

    check_shared_storage(cfg.run, cluster_view())


def shutdown_ray() -> None:
    """Disconnects (a local Ray started by `init_ray` stops); the cluster of a job keeps running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def run_job(
    stage: Stage,
    description: str,
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Runs one job entrypoint; returns its exit status (0 ok, 2 bad input, 1 any other failure).

    Args:
        stage: ``stage(cfg, args) -> path`` runs the package function and returns where its output
            landed (a local path or URI), printed as the job's last line.
        description: the entrypoint's docstring (``--help``).
        argv: arguments (default ``sys.argv[1:]``).
        add_arguments: adds the job's own options to the shared parser.
    """
    p = parser(description)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    name = p.prog.removesuffix(".py")
    t0 = time.perf_counter()
    set_level(args.log_level)
    try:
        cfg = config_from_args(args)
        log(name, f"run={cfg.run}{' (smoke)' if args.smoke else ''}")
        init_ray()
        check_cluster(cfg)
        out = stage(cfg, args)
        status, last = 0, f"output: {out}"
        log(name, f"done in {time.perf_counter() - t0:.1f}s")
    except InputError as e:  # the user can fix it: the message names where, what and how
        status, last = 2, f"error: {e}"
    except Exception as e:  # a bug or an infrastructure failure: traceback first, reason last
        traceback.print_exc()
        status, last = 1, f"error: {type(e).__name__}: {e}"
    shutdown_ray()  # flushes the workers' buffered log lines, so `last` is the job's last line
    print(storage.redact(last), file=sys.stderr if status else sys.stdout, flush=True)
    return status


def run_stage_job(stage: str, description: str, argv: list[str] | None = None) -> int:
    """A job that runs one pipeline stage (with ``--smoke``: the stages before it too; finished
    stages are skipped either way) and reports the stage's folder under RUN."""
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.pipeline import STAGES, run_pipeline

    def go(cfg: Config, args: argparse.Namespace) -> str:
        run_pipeline(cfg, STAGES[: STAGES.index(stage) + 1] if args.smoke else (stage,))
        return RunLayout(cfg.run).stage(stage)

    return run_job(go, description, argv)
