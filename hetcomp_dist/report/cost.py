"""Inference cost (the paper's Table 3 idea): parameters and the wall time to produce every test user's
top-50 -- the ensemble (every teacher ranks, then g aggregates) against each student (one FAISS search).

Both sides run in this process on the same machine, with the test protocol's exclusion (train ∪ valid),
in blocks of users, so the figures compare like with like.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.data.dataset import CSR, load_manifest, load_split, union
from hetcomp_dist.evaluation import retrieval
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log

K = 50


def _test_users(run: str, m: dict, limit: int) -> tuple[np.ndarray, CSR, CSR]:
    train, valid, test = (load_split(run, s, m) for s in ("train", "valid", "test"))
    users = np.nonzero(test.lengths() > 0)[0]
    if limit:
        users = users[:limit]
    return users, train, union(train, valid).take(users)


def _params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _ensemble_cost(run: str, cfg: Config, m: dict, users: np.ndarray, train: CSR, ex: CSR) -> dict | None:
    from hetcomp_dist.knowledge.ensemble import ensemble_topk
    from hetcomp_dist.models.registry import model_class
    from hetcomp_dist.teachers.fit import resolve
    from hetcomp_dist.teachers.trajectory import Ranker, load_weights

    models, dims = [], []
    layout = RunLayout(run)
    for name in cfg.teachers.names:
        man = storage.read_manifest(layout.teacher(name))
        if man is None or man.get("imported"):  # an imported teacher's model is not here to time
            return None
        _, model_cfg = resolve(cfg.teachers, name)
        model = model_class(name, model_cfg)(m["n_users"], m["n_items"], model_cfg, train)
        model.load_state_dict(load_weights(layout.teacher_snapshot(name, man["state_epochs"][-1])))  # E4
        models.append(model)
        dims.append(model_cfg.dim)
    # building the rankers (embeddings, FAISS indexes) is part of serving set-up, not of the timed work
    rankers = [Ranker(model, train, cfg.eval) for model in models]
    weights = np.asarray(cfg.knowledge.weights) if cfg.knowledge.weights else None
    # so is loading g's compiled kernel (a JIT compile on a machine without numba's cache)
    ensemble_topk(np.zeros((1, len(models), 1), np.int32), K, cfg.knowledge.temperature, weights)
    bs = cfg.eval.batch_size
    t0 = time.perf_counter()
    for s in range(0, len(users), bs):
        blk = ex.rows(s, min(s + bs, len(users)))
        lists = np.stack(
            [r.topk(users[s : s + bs], cfg.knowledge.topk, blk.offsets, blk.items) for r in rankers], axis=1
        )
        ensemble_topk(lists, K, cfg.knowledge.temperature, weights)
    wall = time.perf_counter() - t0
    return {
        # each teacher's own dimension where they differ (teachers.<name>.dim)
        "model": f"ensemble ({len(models)} teachers, d={'/'.join(map(str, dict.fromkeys(dims)))})",
        "params": sum(map(_params, models)),
        "wall_s": wall,
        "users_per_s": len(users) / max(wall, 1e-9),
    }


def _student_cost(
    layout: RunLayout, folder: str, label: str, users: np.ndarray, ex: CSR, cfg: Config
) -> dict:
    emb = storage.read_npz(layout.student_embeddings(folder))
    meta_path = layout.student_summary(folder)
    meta = storage.read_json(meta_path) if storage.exists(meta_path) else {}
    metric = meta.get("metric", "ip")
    n_params = int(meta.get("n_params", emb["user"].size + emb["item"].size))
    index = retrieval.index_for(emb["item"], metric, cfg.eval)
    bs = cfg.eval.batch_size
    t0 = time.perf_counter()
    for s in range(0, len(users), bs):
        blk = ex.rows(s, min(s + bs, len(users)))
        retrieval.search_excluding(index, emb["user"][users[s : s + bs]], K, blk.offsets, blk.items)
    wall = time.perf_counter() - t0
    return {"model": label, "params": n_params, "wall_s": wall, "users_per_s": len(users) / max(wall, 1e-9)}


def inference_cost(run: str, cfg: Config) -> list[dict]:
    """Cost rows for the ensemble and every trained HetComp student of the run (what exists)."""
    m = load_manifest(run)
    users, train, ex = _test_users(run, m, cfg.pipeline.cost_users)
    rows = []
    ens = _ensemble_cost(run, cfg, m, users, train, ex)
    if ens is not None:
        rows.append(ens)
    layout = RunLayout(run)
    for model in cfg.pipeline.students:
        folder = layout.student("hetcomp", model)
        if storage.exists(layout.student_embeddings(folder)):
            label = f"HetComp student {model.upper()} (d={cfg.student.dim})"
            rows.append(_student_cost(layout, folder, label, users, ex, cfg))
    for r in rows:
        log(
            "cost",
            f"{r['model']}: {r['params']:,} params, top-50 of {len(users):,} test users "
            f"in {r['wall_s']:.2f}s",
        )
    return rows
