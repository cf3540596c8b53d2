"""Evaluate user/item embeddings on RUN's valid/test split: FAISS top-K with seen-item exclusion,
Recall/NDCG@{10,50}; writes the metrics as JSON and prints where.

    python jobs/evaluate.py --run RUN [--embeddings FILE.npz] [--metric ip|l2] [--metrics-out FILE.json]
    ray job submit --working-dir . -- python jobs/evaluate.py --run s3://BUCKET/runs/NAME \\
        --embeddings s3://BUCKET/runs/NAME/student/hetcomp-mf/emb.npz

FILE.npz holds float32 arrays `user` (n_users, d) and `item` (n_items, d) (read without unpickling).
Default: the embeddings of the configured student (student.method, student.model); the metrics go next
to them (`<FILE>.metrics.json`). With --smoke the stages up to the student run first (finished ones are
skipped). Options and the exit status are shared by every job: see hetcomp_dist/cli/jobs.py.
"""

import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install

from hetcomp_dist.cli.jobs import run_job  # noqa: E402


def add_arguments(p):
    p.add_argument("--embeddings", metavar="FILE.npz", help="default: RUN/student/<method>-<model>/emb.npz")
    p.add_argument(
        "--metric",
        choices=("ip", "l2"),
        default="ip",
        help="inner product (mf/dnn students) or L2 distance (ml/CML)",
    )
    p.add_argument("--metrics-out", metavar="FILE.json", help="default: next to the embeddings")


def evaluate(cfg, args) -> str:
    import json

    from hetcomp_dist import storage
    from hetcomp_dist.errors import InputError
    from hetcomp_dist.evaluation.evaluate import evaluate_embeddings
    from hetcomp_dist.layout import RunLayout
    from hetcomp_dist.pipeline import run_pipeline

    if args.smoke:
        run_pipeline(cfg, ("data", "teachers", "knowledge", "student"))
    layout = RunLayout(cfg.run)
    path = args.embeddings or layout.student_embeddings(layout.student(cfg.student.method, cfg.student.model))
    emb = storage.read_npz(path)
    missing = {"user", "item"} - set(emb)
    if missing:
        raise InputError(
            path,
            f"no array(s) {sorted(missing)} (has {sorted(emb)})",
            "save it with numpy.savez(f, user=U, item=V)",
        )
    metrics = evaluate_embeddings(cfg.run, emb["user"], emb["item"], args.metric, cfg.eval, where=path)
    out = args.metrics_out or path.removesuffix(".npz") + ".metrics.json"
    storage.write_json_atomic(out, metrics)
    print(json.dumps(metrics), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(run_job(evaluate, __doc__, add_arguments=add_arguments))
