"""The ensemble reference: metrics of g over the teachers' E4 rankings (METHOD.md §3), per shard.

Per user: g = rank-importance ensemble of the M exported top-K lists (train already excluded), over
their whole union. The valid protocol then drops the user's test items, the test protocol drops the
valid items, and the list is cut to the largest cut-off -- the same exclusions the single-teacher
metrics use.
"""

from __future__ import annotations

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.data.dataset import load_manifest, load_shard
from hetcomp_dist.errors import InputError
from hetcomp_dist.evaluation.metrics import MetricSums, recall_ndcg
from hetcomp_dist.evaluation.retrieval import excluded_mask, first_k_kept
from hetcomp_dist.knowledge.ensemble import ensemble_topk
from hetcomp_dist.knowledge.signal import teacher_lists
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import Progress
from hetcomp_dist.teachers.imported import builtin_teachers, imported_manifest
from hetcomp_dist.teachers.runner import teacher_hash
from hetcomp_dist.teachers.trajectory import N_STATES

KEYS = ("R@10", "N@10", "R@50", "N@50")


def committed_teachers(run: str, cfg: Config, data: dict) -> dict[str, dict]:
    """Manifests of cfg.teachers.names, each trained under the current config or imported into the run
    for its data and K (else InputError)."""
    out = {}
    layout = RunLayout(run)
    for name in cfg.teachers.names:
        if name not in builtin_teachers():
            out[name] = imported_manifest(run, name, data, cfg.knowledge.topk)
            continue
        m = storage.stage_is_done(layout.teacher(name), teacher_hash(cfg, name, data["config_hash"]))
        if m is None:
            raise InputError(
                layout.teacher(name),
                "no committed teacher trajectory for this config",
                f"run `hetcomp-dist teachers --run {run}` with the same config first",
            )
        out[name] = m
    return out


def ensemble_report(run: str, cfg: Config) -> dict:
    """{"teachers": {name: {"valid": {...}, "test": {...}}}, "ensemble": {"valid": {...}, "test": {...}}}
    with keys R@10, N@10, R@50, N@50; also written to ``RUN/teachers/ensemble.json``."""
    data = load_manifest(run)
    teachers = committed_teachers(run, cfg, data)
    weights = tuple(cfg.knowledge.weights) or None
    report = {
        "teachers": {n: {"valid": _pick(m["valid"]), "test": _pick(m["test"])} for n, m in teachers.items()},
        "ensemble": ensemble_metrics(run, cfg, list(teachers), weights, ("valid", "test"), data, teachers),
    }
    storage.write_json_atomic(RunLayout(run).teachers_ensemble, report)
    return report


def ensemble_metrics(
    run: str,
    cfg: Config,
    names: list[str],
    weights: tuple[float, ...] | None = None,
    splits: tuple[str, ...] = ("valid", "test"),
    data: dict | None = None,
    teachers: dict[str, dict] | None = None,
) -> dict:
    """{split: {R@10, N@10, R@50, N@50}} of the ensemble g over the E4 lists of teachers `names` (weights
    w_x in the order of `names`; None = all 1), under the evaluation protocol."""
    data = data or load_manifest(run)
    teachers = teachers or committed_teachers(run, cfg, data)
    k = min(teachers[n]["K"] for n in names)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    sums = {split: MetricSums(cfg.eval.ks) for split in splits}
    prog = Progress("ensemble", data["n_users"])
    for s, lo, hi in storage.iter_shards("", data["n_users"], data["shard_size"]):
        lists = teacher_lists(run, names, lo, hi, k, N_STATES, data)  # (B, M, K)
        split_csr = {sp: load_shard(run, sp, s, data) for sp in ("valid", "test")}
        for b0 in range(0, hi - lo, cfg.eval.batch_size):
            b1 = min(b0 + cfg.eval.batch_size, hi - lo)
            # the whole union in g's order (M*K): exclusions below may remove many of its head items
            g = ensemble_topk(lists[b0:b1], lists.shape[1] * k, cfg.knowledge.temperature, w)
            for split in splits:
                other = "test" if split == "valid" else "valid"
                gt, ex = split_csr[split].rows(b0, b1), split_csr[other].rows(b0, b1)
                rows = np.nonzero(gt.lengths() > 0)[0]
                if len(rows) == 0:
                    continue
                sub_ex, sub_gt = ex.take(rows), gt.take(rows)
                top = first_k_kept(
                    g[rows],
                    excluded_mask(g[rows], sub_ex.offsets, sub_ex.items, data["n_items"]),
                    max(cfg.eval.ks),
                )
                sums[split].add(recall_ndcg(top, sub_gt.offsets, sub_gt.items, cfg.eval.ks, data["n_items"]))
        prog.update(hi - lo)
    prog.close()
    return {split: _pick(sums[split].means()) for split in splits}


def _pick(metrics: dict) -> dict:
    return {key: float(metrics[key]) for key in KEYS if key in metrics}


def format_table(report: dict) -> str:
    """The report as a fixed-width table: one row per teacher and the ensemble, test then valid."""
    head = (
        f"{'model':<10}"
        + "".join(f"{'test ' + k:>11}" for k in KEYS)
        + "".join(f"{'valid ' + k:>12}" for k in KEYS)
    )
    rows = [head]
    for name, m in list(report["teachers"].items()) + [("ensemble", report["ensemble"])]:
        rows.append(
            f"{name:<10}"
            + "".join(f"{m['test'][k]:>11.4f}" for k in KEYS)
            + "".join(f"{m['valid'][k]:>12.4f}" for k in KEYS)
        )
    return "\n".join(rows)
