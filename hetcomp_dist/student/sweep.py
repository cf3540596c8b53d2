"""Several student trainings as parallel Ray tasks: every method of a comparison for one student, each
baseline's λ_KD grid expanded into one task per candidate (a pruned grid's leader trained on after).

Each task trains in its own process (``student.num_workers = 0``) or, with ``ddp=True``, launches a
DDP TorchTrainer with the config's workers; the caller holds RUN's lease (`hetcomp_dist.lease`) for
them all. Finished trainings are skipped on rerun (each student
folder has its own manifest).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from hetcomp_dist.config import BASELINES, Config, from_dict, to_dict
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log
from hetcomp_dist.student import lambda_grid

STAGE = "sweep"


@dataclass(frozen=True)
class Candidate:
    """One training: a method, its λ_KD candidate (None: a single training) and its folder."""

    method: str
    lam: float | None
    out: str | None
    cfg: Config
    stop_at: int = 0  # a pruned λ grid's first phase: pause after this epoch (`select`)

    @property
    def label(self) -> str:
        return self.method + ("" if self.lam is None else f" λ={self.lam:g}")


def plan(
    run: str, cfg: Config, student: str, methods: tuple[str, ...], ddp: bool = False, cpus: float = 1.0
) -> list[Candidate]:
    """The trainings of the table, HetComp first (the longest), each baseline's λ grid expanded."""
    s = dataclasses.replace(cfg.student, model=student)
    if not ddp:  # one process per training; its threads are the task's CPUs
        s = dataclasses.replace(
            s, num_workers=0, threads_per_worker=s.threads_per_worker or max(1, int(cpus))
        )
    out = []
    for m in sorted(methods, key=lambda m: m != "hetcomp"):
        mcfg = dataclasses.replace(cfg, run=run, student=dataclasses.replace(s, method=m))
        if lambda_grid.needs_grid(mcfg):
            out += [
                Candidate(
                    m,
                    float(lam),
                    RunLayout(run).lambda_candidate(m, student, lam),
                    lambda_grid.with_lambda(mcfg, lam),
                    s.lambda_prune_epoch,
                )
                for lam in s.lambda_grid
            ]
        else:
            out.append(Candidate(m, None, None, mcfg))
    return out


def _train(run: str, cfg_dict: dict, out: str | None, stop_at: int = 0) -> dict:
    """One training, in a Ray task (imports here: the task's process starts clean); the sweep's driver
    holds RUN's lease for it."""
    from hetcomp_dist.student.trainer import train_student

    return train_student(run, from_dict(Config, cfg_dict), out=out, stop_at=stop_at, take_lease=False)


def run_all(run: str, cands: list[Candidate], cpus: float, ddp: bool) -> dict[Candidate, dict | Exception]:
    """Runs the candidates as parallel Ray tasks; returns each one's result or its exception."""
    import ray

    task = ray.remote(num_cpus=0 if ddp else cpus)(_train)
    pending = {task.remote(run, to_dict(c.cfg), c.out, c.stop_at): c for c in cands}
    log(
        STAGE,
        f"{len(pending)} trainings submitted ({cpus:g} CPU each; the cluster has "
        f"{ray.cluster_resources().get('CPU', 0):g})",
    )
    results: dict[Candidate, dict | Exception] = {}
    t0 = time.perf_counter()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        c = pending.pop(done[0])
        try:
            r = ray.get(done[0])
            results[c] = r
            log(
                STAGE,
                f"{c.label}: valid R@50 {r['valid']['R@50']:.4f}, test R@50 {r['test']['R@50']:.4f} "
                f"(best epoch {r.get('best_epoch')}, {r.get('wall_s', 0):.0f}s"
                + (f", paused at epoch {r['epochs']}" if r.get("paused") else "")
                + "); "
                f"{len(pending)} left, {time.perf_counter() - t0:.0f}s so far",
            )
        except Exception as e:  # keep the others going; reported at the end
            results[c] = e
            log(STAGE, f"{c.label}: FAILED ({type(e).__name__}: {str(e).splitlines()[0][:300]})")
    return results


def train_survivors(
    run: str, cands: list[Candidate], results: dict[Candidate, dict | Exception], cpus: float, ddp: bool
) -> dict[Candidate, dict | Exception]:
    """A pruned grid's second phase: per method, the paused candidate with the best validation R@50
    trains on to early stopping (in parallel across methods); the others keep their paused results."""
    go = []
    for m in dict.fromkeys(c.method for c in cands):
        mine = {c.lam: c for c in cands if c.method == m and c.stop_at}
        ok = {lam: results[c] for lam, c in mine.items() if not isinstance(results[c], Exception)}
        lam = (
            lambda_grid.survivor(ok) if ok and len(ok) == len(mine) else None
        )  # a failed candidate: no choice
        if lam is not None:
            log(STAGE, f"{mine[lam].label} leads at epoch {mine[lam].stop_at}: it trains on, the others stop")
            go.append(mine[lam])
    if not go:
        return {}
    on = {c: dataclasses.replace(c, stop_at=0) for c in go}
    again = run_all(run, list(on.values()), cpus, ddp)
    return {
        c: again[c2] if isinstance(again[c2], Exception) else lambda_grid.merge_resumed(results[c], again[c2])
        for c, c2 in on.items()
    }


def collect(
    run: str, cfg: Config, student: str, cands: list[Candidate], results: dict[Candidate, dict | Exception]
) -> tuple[dict[str, dict], dict[str, str]]:
    """Per method: its result (a baseline's grid promoted to the best λ) or why it failed."""
    from hetcomp_dist.student.trainer import student_hash

    final, failed = {}, {}
    for m in dict.fromkeys(c.method for c in cands):
        mine = [c for c in cands if c.method == m]
        errs = [
            f"{c.label}: {type(results[c]).__name__}: {results[c]}"
            for c in mine
            if isinstance(results[c], Exception)
        ]
        ok = {c.lam: results[c] for c in mine if not isinstance(results[c], Exception)}
        if errs:
            failed[m] = "; ".join(errs)
        if not ok:
            continue
        if mine[0].lam is None:
            final[m] = dict(ok[None])
            if m in BASELINES:
                final[m]["lambda_kd"] = mine[0].cfg.student.lambda_kd
        elif (lead := lambda_grid.survivor(ok)) is not None:  # a pruned grid whose leader could not train on
            failed[m] = "; ".join(errs + [f"λ={lead:g} leads the pruned grid but did not train on"])
        else:  # promote the best λ among the finished candidates (all of them, normally)
            mcfg = dataclasses.replace(
                mine[0].cfg, student=dataclasses.replace(mine[0].cfg.student, lambda_kd=-1.0)
            )
            h = lambda_grid.grid_hash(run, mcfg, student_hash) if not errs else "incomplete-grid"
            final[m] = lambda_grid.promote(run, mcfg, ok, h)
    return final, failed
