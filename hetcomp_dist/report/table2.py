"""The paper's Table 2 on a run: every method for one student, side by side with the paper's numbers.

`reproduce(run, cfg, student)` trains w/o KD, RD, RRD, MTD, CL-DRD, DCD and HetComp with the same
student, split and early stopping, reusing the teachers and the knowledge already in RUN. The
trainings run as parallel Ray tasks (`hetcomp_dist.student.sweep`); finished ones are skipped on rerun.

Outputs under RUN/report/: a result row per method (report.json, report.md in the paper's layout
with the relative improvement of HetComp over the best baseline), ``curves.png`` (valid R@50 vs
epoch for w/o KD, the best baseline and HetComp; also kept as ``curves-<student>.png``) and
``table2-<student>.md``: the table with each row's gap to the paper, the chosen λ_KD, and notes.
"""

from __future__ import annotations

from hetcomp_dist import storage
from hetcomp_dist.config import BASELINES, Config
from hetcomp_dist.data.dataset import load_manifest
from hetcomp_dist.errors import InputError
from hetcomp_dist.knowledge.signal import check_teachers
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.lease import RunLease
from hetcomp_dist.progress import log
from hetcomp_dist.report import report
from hetcomp_dist.report.paper import LABELS, METRICS, PAPER_CITEULIKE
from hetcomp_dist.student import sweep

METHODS = ("wokd", *BASELINES, "hetcomp")
STAGE = "table2"
BAND = 0.25  # a baseline within ±25 % of the paper's value counts as reproduced


def ensure_teacher_rows(run: str, cfg: Config) -> None:
    """The ensemble and teacher rows of the table, when the teachers stage did not add them."""
    have = {(r["method"], r["student"]) for r in report.load_results(run)}
    if ("ensemble", "-") in have:
        return
    from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report

    try:
        ens = ensemble_report(run, cfg)
    except (
        InputError,
        KeyError,
    ) as e:  # e.g. teachers exported without metrics: the table goes on without them
        log(STAGE, f"no teacher/ensemble rows: {type(e).__name__}: {e}")
        return
    for name, metrics in ens["teachers"].items():
        report.add_result(run, name, "-", metrics)
    report.add_result(run, "ensemble", "-", ens["ensemble"])


def reproduce(
    run: str,
    cfg: Config,
    student: str,
    methods: tuple[str, ...] = METHODS,
    cpus: float = 1.0,
    ddp: bool = False,
) -> dict:
    """Trains every method of Table 2 for `student` on RUN and writes the report (see the module doc).

    Holds RUN's lease (`hetcomp_dist.lease`) throughout; the trainings' Ray tasks write under it.

    Args:
        run: a run with data, teachers (E4 exports) and, for HetComp, knowledge.
        cfg: the config (student section: the shared training settings; lambda_kd < 0 = grid).
        student: mf | ml | dnn.
        methods: which rows to train (default all seven).
        cpus: CPUs per training task (its torch threads when training in-process).
        ddp: launch each training as a DDP TorchTrainer with ``student.num_workers`` workers instead.

    Returns:
        {"results": {method: result}, "failed": {method: reason}, "report": folder, "table": path,
         "curves": path, "best_baseline": method | None}.
    """
    with RunLease(run, cfg.pipeline):
        return _reproduce(run, cfg, student, methods, cpus, ddp)


def _reproduce(run: str, cfg: Config, student: str, methods: tuple[str, ...], cpus: float, ddp: bool) -> dict:
    bad = [m for m in methods if m not in METHODS]
    if bad or student not in ("mf", "ml", "dnn"):
        raise InputError(
            "--methods/--student",
            f"unknown {bad or student!r}",
            f"methods: {', '.join(METHODS)}; students: mf, ml, dnn",
        )
    load_manifest(run)
    if set(methods) - {"wokd"}:
        check_teachers(run, cfg.teachers.names)
        ensure_teacher_rows(run, cfg)
    cands = sweep.plan(run, cfg, student, tuple(methods), ddp, cpus)
    results = sweep.run_all(run, cands, cpus, ddp)
    results.update(sweep.train_survivors(run, cands, results, cpus, ddp))
    final, failed = sweep.collect(run, cfg, student, cands, results)
    for m, r in final.items():
        extra = {
            k: r[k]
            for k in ("best_epoch", "wall_s", "lambda_kd", "lambda_grid", "lambda_pruned", "epochs")
            if k in r
        }
        report.add_result(run, m, student, r, extra)
    rdir = report.write_report(run, cfg.teachers.names)
    layout = RunLayout(run)
    # the best baseline among every row the report holds for this student (earlier calls' included):
    # a rerun for one method must not relabel the curves
    best = best_baseline({r["method"]: r for r in report.load_results(run) if r["student"] == student})
    names = {layout.student("wokd", student): LABELS["wokd"]}
    if best:
        names[layout.student(best, student)] = f"{LABELS[best]} (best baseline)"
    names[layout.student("hetcomp", student)] = LABELS["hetcomp"]
    title = f"Validation R@50 during training, {student.upper()} student"
    curves = layout.curves
    for path in (curves, layout.student_curves(student)):
        report.plot_curves(run, path, names, title)
    table = layout.table2(student)
    source = load_manifest(run).get("source") or {}
    dataset = (
        (source.get("format") or source.get("kind", "unknown")) if isinstance(source, dict) else str(source)
    )
    text = render_table2(report.load_results(run), student, dataset, failed)
    storage.write_bytes_atomic(table, text.encode())
    log(STAGE, f"wrote {table} and {curves}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return {
        "results": final,
        "failed": failed,
        "report": rdir,
        "table": table,
        "curves": curves,
        "best_baseline": best,
    }


def best_baseline(results: dict[str, dict]) -> str | None:
    """The strongest baseline on test R@50 (the report's definition of 'the best baseline')."""
    base = [m for m in BASELINES if m in results]
    return max(base, key=lambda m: results[m]["test"]["R@50"]) if base else None


def _gap(ours: float, paper: float) -> float:
    return (ours / paper - 1.0) * 100.0 if paper else float("nan")


def render_table2(results: list[dict], student: str, dataset: str, failed: dict[str, str]) -> str:
    """table2-<student>.md: ours vs the paper per row and metric, the gaps, λ_KD, and notes."""
    by = {(r["method"], r["student"]): r for r in results}
    paper = dataset == "citeulike"
    out = [
        f"# Table 2 reproduction: {student.upper()} student (dimension 6), dataset {dataset}",
        "",
        "Test split, full ranking with seen items excluded; every model selected on validation R@50."
        + (" `paper` = the paper's CiteULike numbers; `gap` = ours / paper − 1." if paper else ""),
        "",
    ]
    cols = ["method", *METRICS]
    if paper:
        cols += [f"paper {k}" for k in METRICS] + ["gap R@50", "gap N@50"]
    cols += ["λ_KD", "best epoch"]
    out += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    rows = [("ensemble", "-"), *[(m, student) for m in METHODS]]
    gaps: dict[str, tuple[float, float]] = {}
    for key in rows:
        r = by.get(key)
        if r is None:
            continue
        m = key[0]
        cells = [f"{r['test'][k]:.4f}" for k in METRICS]
        if paper:
            p = PAPER_CITEULIKE.get(m, {}).get(key[1])
            if p:
                g = (_gap(r["test"]["R@50"], p[2]), _gap(r["test"]["N@50"], p[3]))
                gaps[m] = g
                cells += [f"{v:.4f}" for v in p] + [f"{g[0]:+.1f}%", f"{g[1]:+.1f}%"]
            else:
                cells += ["—"] * (len(METRICS) + 2)
        lam = r.get("lambda_kd")
        cells += ["—" if lam is None else f"{lam:g}", str(r.get("best_epoch", "—"))]
        out.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    out.append("")
    ours = {m: by[(m, student)] for m in METHODS if (m, student) in by}
    best = best_baseline(ours)
    if best and "hetcomp" in ours:
        h, b = ours["hetcomp"]["test"], ours[best]["test"]
        imp = ", ".join(f"{k} {_gap(h[k], b[k]):+.1f}%" for k in METRICS)
        beats = all(h[k] > ours[m]["test"][k] for m in BASELINES if m in ours for k in ("R@50", "N@50"))
        out += [
            f"**HetComp vs the best baseline ({LABELS[best]})**: {imp}. HetComp "
            + ("beats" if beats else "does NOT beat")
            + " every baseline on test R@50 and N@50.",
            "",
        ]
    grids = [(m, ours[m]) for m in BASELINES if m in ours and ours[m].get("lambda_grid")]
    if grids:
        out += ["λ_KD chosen on validation R@50 (valid R@50 of each candidate):", ""]
        for m, r in grids:
            if len(r["lambda_grid"]) == 1:  # a grid of one value: nothing was chosen, say so
                (only,) = r["lambda_grid"].values()
                out.append(
                    f"- {LABELS[m]}: λ = {r['lambda_kd']:g} only — a single candidate, not a choice on "
                    f"validation (valid R@50 {only:.4f})"
                )
            else:
                pruned = r.get("lambda_pruned") or {}
                out.append(
                    f"- {LABELS[m]}: λ = {r['lambda_kd']:g} — "
                    + ", ".join(
                        f"{k}: {v:.4f}" + (f" (stopped at epoch {pruned[k]})" if k in pruned else "")
                        for k, v in r["lambda_grid"].items()
                    )
                )
        out.append("")
    if paper and gaps:
        out += _notes(gaps)
    if failed:
        out += (
            ["## Failed trainings", ""] + [f"- {LABELS.get(m, m)}: {why}" for m, why in failed.items()] + [""]
        )
    return "\n".join(out) + "\n"


def _notes(gaps: dict[str, tuple[float, float]]) -> list[str]:
    """Which baselines sit outside the ±25 % band, read against the teachers' own gap to the paper."""
    out = ["## Gaps to the paper", ""]
    ens = gaps.get("ensemble")
    if ens:
        out.append(
            f"- Our teacher ensemble is at {ens[0]:+.1f}% (R@50) / {ens[1]:+.1f}% (N@50) of the paper's: "
            "every distilled student inherits that gap, so read the rows below against it."
        )
    outside = [m for m in (*BASELINES,) if m in gaps and max(abs(gaps[m][0]), abs(gaps[m][1])) > 100 * BAND]
    inside = [m for m in BASELINES if m in gaps and m not in outside]
    if inside:
        out.append(
            f"- Within ±{100 * BAND:.0f}% of the paper on R@50 and N@50: "
            + ", ".join(LABELS[m] for m in inside)
            + "."
        )
    for m in outside:
        g = gaps[m]
        why = ""
        if ens:
            d = g[0] - ens[0]
            why = f"; {d:+.1f} points from the ensemble's own gap on R@50, " + (
                "so mostly inherited from the teachers"
                if abs(d) <= 100 * BAND
                else "not explained by the teachers"
            )
        out.append(
            f"- **{LABELS[m]} is outside the ±{100 * BAND:.0f}% band** "
            f"({g[0]:+.1f}% R@50, {g[1]:+.1f}% N@50{why})."
        )
    out.append("")
    return out
