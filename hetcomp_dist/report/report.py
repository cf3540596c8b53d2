"""Collects every result of a run into RUN/report: report.json, report.md, curves.png.

Results are stored one file each under ``RUN/report/rows/<method>-<student>.json`` (atomic), so stages
and later ``distill`` runs add rows independently and the report is regenerated from all of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hetcomp_dist import storage
from hetcomp_dist.config import BASELINES
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log
from hetcomp_dist.report.paper import LABELS, METRICS, PAPER_CITEULIKE

SPLITS = ("valid", "test")


def add_result(
    run: str,
    method: str,
    student: str,
    metrics: Mapping[str, Mapping[str, float]],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Stores one result: ``metrics = {"valid": {"R@10", ...}, "test": {...}}``; student "-" for teachers."""
    row = {"method": method, "student": student, **{s: dict(metrics[s]) for s in SPLITS}, **(extra or {})}
    storage.write_json_atomic(RunLayout(run).report_row(method, student), row)


def load_results(run: str) -> list[dict]:
    return [storage.read_json(p) for p in storage.list_files(RunLayout(run).report_rows, ".json")]


def flat_rows(results: list[dict]) -> list[dict]:
    """report.json rows: one per (method, student, split) with the four metrics."""
    rows = []
    for r in results:
        for split in SPLITS:
            rows.append(
                {
                    "method": r["method"],
                    "student": r["student"],
                    "split": split,
                    **{m: float(r[split][m]) for m in METRICS},
                }
            )
    return rows


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def _als_label(row: Mapping[str, Any]) -> str:
    return f"ALS d={row['dim']} (α={row['alpha']:g}, λ={row['reg']:g}, {row['iterations']} it.)"


def _table(
    results: list[dict], student: str, paper: bool, teachers: list[str], als: list[dict] | None = None
) -> list[str]:
    """One student's table (`student` "-": the ensemble's and the ALS rows only), test split; the last
    columns are a row's parameters and training wall time where the row records them."""
    by = {(r["method"], r["student"]): r for r in results}
    head = "| method | " + " | ".join(METRICS) + " |"
    if paper:
        head += " paper " + " | paper ".join(METRICS) + " |"
    head += " params | train (s) |"
    lines = [head, "|" + " --- |" * (3 + len(METRICS) * (2 if paper else 1))]

    def line(label: str, r: dict | None, key: str, pstudent: str) -> None:
        if r is None:
            return
        cells = [_fmt(r["test"][m]) for m in METRICS]
        if paper:
            p = PAPER_CITEULIKE.get(key, {}).get(pstudent)
            cells += [_fmt(v) for v in p] if p else ["—"] * len(METRICS)
        cells.append(f"{r['n_params']:,}" if r.get("n_params") else "—")
        cells.append(f"{r['wall_s']:.1f}" if r.get("wall_s") is not None else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    line(LABELS["ensemble"], by.get(("ensemble", "-")), "ensemble", "-")
    teacher_rows = [by[(t, "-")] for t in teachers if (t, "-") in by]
    if teacher_rows:
        best = max(teacher_rows, key=lambda r: r["valid"]["R@50"])  # chosen on validation
        line(f"{LABELS['best_teacher']} ({best['method']})", best, "best_teacher", "-")
    for key in ("wokd", *BASELINES, "hetcomp"):
        line(LABELS[key], by.get((key, student)), key, student)
    for row in als or []:  # the same rows under every student: they do not depend on it
        line(_als_label(row), {**row, "n_params": row["params"]}, "als", "-")
    return lines


def _als_note(als: list[dict]) -> list[str]:
    grid = ", ".join(f"d={r['dim']}: {len(r['grid'])} settings in {r['search_s']:.1f}s" for r in als)
    return [
        "ALS rows: implicit's ALS at dimension d, its confidence 1 + α, L2 weight λ and iterations picked "
        "on valid R@50 by a small grid (`report.als_*`; "
        f"{grid}); train (s): the chosen setting's iterations with their validation.",
        "",
    ]


def render_markdown(
    results: list[dict],
    dataset: str,
    teachers: list[str],
    stage_times: Mapping[str, float] | None,
    cost: list[dict] | None,
    als: list[dict] | None = None,
) -> str:
    paper = dataset == "citeulike"
    als = als or []
    students = sorted({r["student"] for r in results if r["student"] != "-"})
    out = [
        "# hetcomp_dist report",
        "",
        f"Dataset: **{dataset}**. Test split, Recall/NDCG@10/50 (full ranking, seen items excluded); "
        "every model selected on validation R@50."
        + (" The paper's CiteULike numbers (METHOD.md §5) beside ours." if paper else ""),
        "",
    ]
    for s in students:
        out += (
            [f"## Student: {s.upper()} (dimension 6)", ""] + _table(results, s, paper, teachers, als) + [""]
        )
        by = {r["method"]: r for r in results if r["student"] == s}
        base = [by[b] for b in BASELINES if b in by]
        if "hetcomp" in by and base:
            best = max(base, key=lambda r: r["test"]["R@50"])
            gains = {
                m: (by["hetcomp"]["test"][m] / best["test"][m] - 1) * 100
                for m in METRICS
                if best["test"][m] > 0
            }
            out += [
                f"HetComp vs the best baseline ({LABELS[best['method']]}): "
                + ", ".join(f"{m} {g:+.1f}%" for m, g in gains.items()),
                "",
            ]
    if als and not students:
        out += ["## Ensemble and the small-model baseline", ""] + _table(results, "-", paper, teachers, als)
        out.append("")
    if als:
        out += _als_note(als)
    if teachers:
        out += ["## Teachers (test)", "", "| teacher | " + " | ".join(METRICS) + " |", "|" + " --- |" * 5]
        by = {r["method"]: r for r in results if r["student"] == "-"}
        for t in teachers:
            if t in by:
                out.append(f"| {t} | " + " | ".join(_fmt(by[t]["test"][m]) for m in METRICS) + " |")
        out.append("")
    if cost:
        out += [
            "## Inference cost (every test user's top-50, same machine)",
            "",
            "| model | parameters | wall time (s) | users/s |",
            "| --- | --- | --- | --- |",
        ]
        out += [
            f"| {c['model']} | {c['params']:,} | {c['wall_s']:.2f} | {c['users_per_s']:,.0f} |" for c in cost
        ]
        out.append("")
    if stage_times:
        out += [
            "## Wall time per stage (summed over pipeline invocations)",
            "",
            "| stage | seconds |",
            "| --- | --- |",
        ]
        out += [f"| {k} | {v:.1f} |" for k, v in stage_times.items()] + [
            f"| total | {sum(stage_times.values()):.1f} |",
            "",
        ]
    out += ["Curves: `curves.png` (valid R@50 against epoch; HetComp's DKC state means on the right axis)."]
    return "\n".join(out) + "\n"


def plot_curves(
    run: str, path: str, names: Mapping[str, str] | None = None, title: str | None = None
) -> bool:
    """valid R@50 vs epoch per student run, with HetComp's mean DKC state. False when nothing to plot.

    `names` ({student folder (`RunLayout.student`): legend label}, in plotting order) keeps only those
    runs; without it every folder under RUN/student is plotted under its own name.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    layout = RunLayout(run)
    dirs = storage.list_dirs(layout.students)
    if names is not None:
        dirs = [d for d in names if d in dirs]
    for d in dirs:
        recs = _read_jsonl(layout.student_metrics(d))
        pts = [
            (r["epoch"], r["valid"]["R@50"])
            for r in recs
            if isinstance(r.get("valid"), dict) and "R@50" in r["valid"]
        ]
        means = [(r["epoch"], sum(r["means"].values()) / len(r["means"])) for r in recs if r.get("means")]
        if pts:
            runs.append(((names or {}).get(d) or d.rstrip("/").rpartition("/")[2], pts, means))
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax2 = None
    for name, pts, means in runs:
        ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        if means:
            ax2 = ax2 or ax.twinx()
            ax2.step(*zip(*means), where="post", ls="--", alpha=0.6, label=f"{name}: mean DKC state")
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid R@50")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("mean teacher state (0 = E1 … 3 = E4)")
        ax2.set_ylim(-0.1, 3.1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    ax.set_title(title or "Validation R@50 during student training")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes_atomic(path, buf.getvalue())
    return True


def _read_jsonl(path: str) -> list[dict]:
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_bytes(path).decode().splitlines() if line.strip()]


def record_stage_times(run: str, stage_times: Mapping[str, float]) -> None:
    """Adds these stage wall times to RUN/report/meta.json (summed over invocations: a resumed run adds
    the work it redid), so an invocation without the report stage still counts in the next report."""
    meta_path = RunLayout(run).report_meta
    meta = storage.read_json(meta_path) if storage.exists(meta_path) else {}
    old = meta.get("stage_times", {})
    meta["stage_times"] = {**old, **{k: old.get(k, 0.0) + v for k, v in stage_times.items()}}
    storage.write_json_atomic(meta_path, meta)


def write_report(
    run: str,
    teachers: list[str] | tuple[str, ...] = (),
    stage_times: Mapping[str, float] | None = None,
    cost: list[dict] | None = None,
    als: Mapping[str, Any] | None = None,
) -> str:
    """Regenerates RUN/report from every stored result; returns the report folder.

    `cost` (report/cost.py) and `als` (report/als_baseline.py: {"config_hash", "rows"}) replace the ones
    stored in RUN/report/meta.json when given; the stored ones are reported otherwise.
    """
    from hetcomp_dist.data.dataset import load_manifest

    source = load_manifest(run).get("source", {})
    dataset = (
        (source.get("format") or source.get("kind", "unknown")) if isinstance(source, dict) else str(source)
    )
    results = load_results(run)
    layout = RunLayout(run)
    if stage_times:
        record_stage_times(run, stage_times)
    meta_path = layout.report_meta
    meta = storage.read_json(meta_path) if storage.exists(meta_path) else {}
    if cost:
        meta["cost"] = cost
    if teachers:
        meta["teachers"] = list(teachers)
    if als:
        meta["als_baseline"] = dict(als)
    storage.write_json_atomic(meta_path, meta)
    als_rows = meta.get("als_baseline", {}).get("rows", [])
    storage.write_json_atomic(
        layout.report_json,
        {
            "dataset": dataset,
            "rows": flat_rows(results),
            "cost": meta.get("cost", []),
            "als_baseline": als_rows,
            "stage_times": meta.get("stage_times", {}),
        },
    )
    md = render_markdown(
        results, dataset, meta.get("teachers", []), meta.get("stage_times"), meta.get("cost"), als_rows
    )
    storage.write_bytes_atomic(layout.report_md, md.encode())
    plot_curves(run, layout.curves)
    log("report", f"wrote {layout.report_md}")
    return layout.report
