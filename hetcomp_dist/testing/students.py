"""A finished student folder from given vectors, in the student stage's exact layout (emb.npz,
model.json, a committed manifest): for tests and benchmarks of what consumes a trained student
(recommend, export) without training one."""

from __future__ import annotations

import numpy as np

from hetcomp_dist import storage
from hetcomp_dist.layout import RunLayout


def write_student(
    run: str, student: str, user: np.ndarray, item: np.ndarray, metric: str = "ip", tag: str = "test"
) -> str:
    """Commits ``RUN/student/<method>-<model>`` holding `user` (n_users, d) and `item` (n_items, d);
    `tag` goes into its config hash. Returns the folder."""
    method, _, model = student.partition("-")
    layout = RunLayout(run)
    out = layout.student(method, model)
    storage.write_npz_atomic(
        layout.student_embeddings(out), user=np.asarray(user, np.float32), item=np.asarray(item, np.float32)
    )
    result = {"best_epoch": 0, "metric": metric, "valid": {}, "test": {}}
    storage.write_json_atomic(layout.student_summary(out), result)
    storage.write_manifest(
        out,
        {
            "config_hash": storage.config_hash("written-by-testing", tag, student),
            "stage": "student",
            "method": method,
            "model": model,
            "result": result,
        },
    )
    return out
