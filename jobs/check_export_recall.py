"""Recall@100 against exact of the teachers' IVF on a trained RUN's embeddings: for every state of every
embedding teacher, FAISS's own inner-product IVF beside ours (`retrieval.build_index(kind="ivf")`, an L2
IVF over MIPS-augmented items for inner-product teachers), at a few (lists, probed) settings.

    python jobs/check_export_recall.py --run RUN [--teachers mf,gnn,ml] [--users 1000]
                                        [--probes 1024:32,256:8]

Each teacher's model is rebuilt from the teachers section of the config saved beside its manifest and
loaded from its state snapshots (weights only). Top-100 over every item, no exclusions, on --users random
users, one FAISS thread. Teachers without embeddings (NeuMF, the autoencoders) are skipped: their export
ranks index candidates by exact scores. Ends with one JSON line
{teacher: {state: {setting: {"ours", "faiss_ip"}}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import TeachersConfig, from_dict  # noqa: E402
from hetcomp_dist.data.dataset import load_manifest, load_split  # noqa: E402
from hetcomp_dist.evaluation.retrieval import build_index  # noqa: E402
from hetcomp_dist.layout import RunLayout  # noqa: E402
from hetcomp_dist.models.registry import model_class  # noqa: E402
from hetcomp_dist.teachers.trajectory import load_weights  # noqa: E402

K = 100


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(g[g >= 0], w)) / len(w) for g, w in zip(got, want)]))


def exact_top(q: np.ndarray, items: np.ndarray, metric: str) -> np.ndarray:
    s = q.astype(np.float64) @ items.T.astype(np.float64)
    if metric == "l2":  # -|u - i|^2 ranks like 2 u.i - |i|^2
        s = 2 * s - (items.astype(np.float64) ** 2).sum(1)[None, :]
    return np.argsort(-s, axis=1, kind="stable")[:, :K]


def faiss_ip_ivf(items: np.ndarray, nlist: int, nprobe: int) -> faiss.Index:
    d = items.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    index.nprobe = min(nprobe, nlist)
    return index


def teacher_states(run: str, name: str, data: dict, train):
    """(state number, (user vectors, item vectors, metric) or None) of each exported state."""
    layout = RunLayout(run)
    # the teachers section only: the models' settings, as trained (the run's other sections play no part)
    raw = yaml.safe_load(storage.read_bytes(storage.config_path(layout.teacher(name))))
    tcfg = from_dict(TeachersConfig, raw["teachers"], "teachers")
    model = model_class(name, tcfg)(data["n_users"], data["n_items"], tcfg, train)
    for state, epoch in enumerate(storage.read_manifest(layout.teacher(name))["state_epochs"], 1):
        model.load_state_dict(load_weights(layout.teacher_snapshot(name, epoch)))
        yield state, model.eval().embeddings()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--teachers", default="mf,gnn,ml")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--probes", default="1024:32,256:8", help="lists:probed pairs (lists <= items / 39)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    data, train = load_manifest(args.run), load_split(args.run, "train")
    users = np.random.default_rng(0).choice(data["n_users"], min(args.users, data["n_users"]), replace=False)
    probes = [tuple(int(x) for x in p.split(":")) for p in args.probes.split(",")]
    out: dict = {}
    for name in args.teachers.split(","):
        for state, emb in teacher_states(args.run, name, data, train):
            if emb is None:
                print(f"{name}: no embeddings (its export ranks index candidates by exact scores)")
                break
            u, items, metric = emb
            q, items = np.asarray(u, np.float32)[users], np.ascontiguousarray(items, np.float32)
            want = exact_top(q, items, metric)
            for nlist, nprobe in probes:
                lists = min(nlist, len(items) // 39)
                ours = build_index(items, metric, "ivf", ivf_nlist=nlist, ivf_nprobe=nprobe)
                row = {"ours": round(recall(ours.search(q, K)[1], want), 4)}
                if metric == "ip":
                    theirs = faiss_ip_ivf(items, lists, nprobe).search(q, K)[1]
                    row["faiss_ip"] = round(recall(theirs, want), 4)
                setting = f"{min(nprobe, lists)}/{lists}"
                out.setdefault(name, {}).setdefault(f"E{state}", {})[setting] = row
                print(f"{name} E{state} {metric} probed {setting}: {row}", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
