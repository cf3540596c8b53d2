"""Recall@100 against exact of the teachers' IVF on a trained RUN's embeddings: for every state of every
embedding teacher, the export's own measure (`trajectory.recall_vs_exact`: the users' train items
excluded, as in the export) of our IVF (`retrieval.build_index(kind="ivf")`, an L2 IVF over
MIPS-augmented items for inner-product teachers) and, for inner-product teachers, of FAISS's own
inner-product IVF, at a few (lists, probed) settings.

    python jobs/check_export_recall.py --run RUN [--teachers mf,gnn,ml] [--users 1000]
                                        [--probes 1024:32,256:8]

Each teacher's model is rebuilt from the teachers section of the config saved beside its manifest and
loaded from its state snapshots (weights only); --users random users, one FAISS thread. Teachers without
embeddings (NeuMF, the autoencoders) are skipped: their export ranks index candidates by exact scores.
Ends with one JSON line {teacher: {state: {setting: {"ours", "faiss_ip"}}}}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from bench_ivf_recall import faiss_ip_ivf  # noqa: E402  (jobs/, this script's folder)

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import EvalConfig, TeachersConfig, from_dict  # noqa: E402
from hetcomp_dist.data.dataset import load_manifest, load_split  # noqa: E402
from hetcomp_dist.layout import RunLayout  # noqa: E402
from hetcomp_dist.models.registry import model_class  # noqa: E402
from hetcomp_dist.teachers.trajectory import Ranker, load_weights, recall_vs_exact  # noqa: E402

K = 100


def teacher_states(run: str, name: str, data: dict, train):
    """(state number, the model in that state) of each exported state."""
    layout = RunLayout(run)
    # the teachers section only: the models' settings, as trained (the run's other sections play no part)
    raw = yaml.safe_load(storage.read_bytes(storage.config_path(layout.teacher(name))))
    tcfg = from_dict(TeachersConfig, raw["teachers"], "teachers")
    model = model_class(name, tcfg)(data["n_users"], data["n_items"], tcfg, train)
    for state, epoch in enumerate(storage.read_manifest(layout.teacher(name))["state_epochs"], 1):
        model.load_state_dict(load_weights(layout.teacher_snapshot(name, epoch)))
        yield state, model


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
    flat = EvalConfig(index="flat")
    out: dict = {}
    for name in args.teachers.split(","):
        for state, model in teacher_states(args.run, name, data, train):
            exact = Ranker(model, train, flat)
            if exact.index is None:
                print(f"{name}: no embeddings (its export ranks index candidates by exact scores)")
                break
            for nlist, nprobe in probes:
                ivf = dataclasses.replace(flat, index="ivf", ivf_nlist=nlist, ivf_nprobe=nprobe)
                ours = Ranker(model, train, ivf)
                row = {"ours": round(recall_vs_exact(ours, exact, train, users, K), 4)}
                lists = min(nlist, len(exact.item_emb) // 39)
                if exact.metric == "ip":  # the same ranker over FAISS's own inner-product IVF
                    ours.index = faiss_ip_ivf(exact.item_emb, lists, nprobe)
                    row["faiss_ip"] = round(recall_vs_exact(ours, exact, train, users, K), 4)
                setting = f"{min(nprobe, lists)}/{lists}"
                out.setdefault(name, {}).setdefault(f"E{state}", {})[setting] = row
                print(f"{name} E{state} {exact.metric} probed {setting}: {row}", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
