"""The whole pipeline: data -> teachers -> knowledge -> students -> report.

Every stage skips itself when its manifest matches the config, so a rerun after a crash resumes
where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hetcomp_dist.config import Config
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import log
from hetcomp_dist.student.hooks import TrainHooks

STAGES = ("data", "teachers", "knowledge", "student", "report")


@contextmanager
def _timed(stage: str, run: str | None) -> Iterator[None]:
    """Times a stage. With a run, its wall time goes to the run's report metadata as soon as it is done, so
    the report counts it even when the report stage runs in a later invocation (or a later stage fails);
    the report stage itself passes None (it is not a row of the report it writes)."""
    from hetcomp_dist.report import report

    t0 = time.perf_counter()
    log("pipeline", f"stage {stage} ...")
    yield
    dt = time.perf_counter() - t0
    if run is not None:
        report.record_stage_times(run, {stage: dt})
    log("pipeline", f"stage {stage} done in {dt:.1f}s")


def ensure_data(cfg: Config) -> dict:
    """RUN/data from the configured input, or the built-in synthetic dataset."""
    if cfg.data.format == "synthetic":
        from hetcomp_dist.data.synth import synthesize

        return synthesize(cfg.run, cfg.synth, cfg.data, cfg)
    if not cfg.data.input:
        raise InputError("data.input", f"format {cfg.data.format!r} needs an input path", "pass --input PATH")
    from hetcomp_dist.data.ingest import ingest

    return ingest(cfg.run, cfg.data, cfg)


def run_pipeline(cfg: Config, stages: tuple[str, ...] | None = None, hooks: TrainHooks | None = None) -> str:
    """Runs the given stages (all by default) in data-flow order; returns the report folder.

    Args:
        cfg: the config (cfg.run is the RUN).
        stages: a subset of STAGES (None: all).
        hooks: callables run on every Train rank of each student training (`student.hooks`: probes,
            fault drills).

    Holds RUN's lease (`hetcomp_dist.lease`) throughout: the stage functions take it again as a no-op.
    """
    stages = tuple(stages or STAGES)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise InputError("stages", f"unknown stage(s) {sorted(unknown)}", f"choose from {', '.join(STAGES)}")
    with RunLease(cfg.run, cfg.pipeline):
        return _run_stages(cfg, stages, hooks)


def _run_stages(cfg: Config, stages: tuple[str, ...], hooks: TrainHooks | None) -> str:
    from hetcomp_dist.report import report

    t_all = time.perf_counter()
    if "data" in stages:
        with _timed("data", cfg.run):
            ensure_data(cfg)
    if "teachers" in stages:
        from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report
        from hetcomp_dist.teachers.actors import train_teachers

        with _timed("teachers", cfg.run):
            train_teachers(cfg.run, cfg)
            ens = ensemble_report(cfg.run, cfg)
            for name, metrics in ens["teachers"].items():
                report.add_result(cfg.run, name, "-", metrics)
            report.add_result(cfg.run, "ensemble", "-", ens["ensemble"])
    if "knowledge" in stages:
        from hetcomp_dist.knowledge.rounds import build_round0

        with _timed("knowledge", cfg.run):
            build_round0(cfg.run, cfg)
    if "student" in stages:
        from hetcomp_dist.student.trainer import train_student

        with _timed("student", cfg.run):
            for model in cfg.pipeline.students:
                for method in cfg.pipeline.methods:
                    scfg = dataclasses.replace(
                        cfg, student=dataclasses.replace(cfg.student, model=model, method=method)
                    )
                    res = train_student(cfg.run, scfg, hooks=hooks)
                    report.add_result(
                        cfg.run,
                        method,
                        model,
                        res,
                        {
                            "best_epoch": res.get("best_epoch"),
                            "wall_s": res.get("wall_s"),
                            "n_params": res.get("n_params"),
                        },
                    )
                    log("pipeline", f"student {method}-{model}: test {res['test']}")
    out = RunLayout(cfg.run).report
    if "report" in stages:
        with _timed("report", None):
            cost = None
            if "teachers" in stages or "student" in stages:
                from hetcomp_dist.report.cost import inference_cost

                cost = inference_cost(cfg.run, cfg)
            als = None
            if cfg.report.als_baseline:
                from hetcomp_dist.report.als_baseline import als_baseline

                als = als_baseline(cfg.run, cfg)
            # stage times: _timed
            out = report.write_report(cfg.run, cfg.teachers.names, None, cost, als)
    log("pipeline", f"done in {time.perf_counter() - t_all:.1f}s; report: {RunLayout(cfg.run).report_md}")
    return out
