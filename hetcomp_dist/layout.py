"""Every path of a RUN, in one place: the README's "On-disk layout" as code.

The layout on storage is the interface between stages (ARCHITECTURE.md), so every stage asks
`RunLayout` where its inputs and outputs are, and no other module joins names into RUN paths.
`storage` keeps the mechanics: resolving a path, atomic writes, manifests, the shard files inside a
folder. RUN is a local path or an ``s3://`` / ``gs://`` URI::

    RUN/_lease.json           who writes the RUN now (hetcomp_dist.lease), while they do
    RUN/data/                 _manifest.json, {train,valid,test}/shard-*.parquet, maps/{users,items}.parquet
    RUN/teachers/             _manifest.json, ensemble.json
        <name>/               _manifest.json, state=1..4/, observed/, metrics.json,
                              work/ (ckpt.pt, snap-<epoch>.pt: the teacher's own)
    RUN/knowledge/            pos/, round=0/, round=<r>/ (by hand), states/<name>/state=<e>/shard-*.arrow
    RUN/student/<method>-<model>/
                              _manifest.json, metrics.jsonl, emb.npz, model.json, knowledge/round=<r>/,
                              dkc/round-<r>.npz, _ray/, _local/<training>.pt, lambda=<λ>/ (the λ grid's
                              candidates, each a student folder of its own)
    RUN/report/               report.json, report.md, curves.png, curves-<student>.png,
                              table2-<student>.md, meta.json, rows/<method>-<student>.json
    RUN/recommend/            every user's top-K in raw ids
    RUN/export/<student>/     a serving bundle
"""

from __future__ import annotations

from dataclasses import dataclass

from hetcomp_dist import storage


@dataclass(frozen=True)
class RunLayout:
    """The paths of one RUN (a local path or a URI); every path is a plain string."""

    run: str

    def _path(self, *parts: str) -> str:
        return storage.join(self.run, *parts)

    def stage(self, name: str) -> str:
        """RUN/<stage>: the folder a pipeline stage (data, teachers, knowledge, student, report) writes."""
        folders = {
            "data": self.data,
            "teachers": self.teachers,
            "knowledge": self.knowledge,
            "student": self.students,
            "report": self.report,
        }
        if name not in folders:
            raise ValueError(f"unknown stage {name!r}: choose from {', '.join(folders)}")
        return folders[name]

    @property
    def lease(self) -> str:
        """RUN/_lease.json (the one writer's host, pid, token, start and heartbeat; `hetcomp_dist.lease`)"""
        return self._path("_lease.json")

    # ------------------------------------------------------------------------------------- data
    @property
    def data(self) -> str:
        """RUN/data"""
        return self._path("data")

    def split(self, name: str) -> str:
        """RUN/data/<name> (train, valid or test: shard-*.parquet of user, items)"""
        return storage.join(self.data, name)

    @property
    def maps(self) -> str:
        """RUN/data/maps"""
        return storage.join(self.data, "maps")

    @property
    def users_map(self) -> str:
        """RUN/data/maps/users.parquet (id, raw)"""
        return storage.join(self.maps, "users.parquet")

    @property
    def items_map(self) -> str:
        """RUN/data/maps/items.parquet (id, raw)"""
        return storage.join(self.maps, "items.parquet")

    # --------------------------------------------------------------------------------- teachers
    @property
    def teachers(self) -> str:
        """RUN/teachers"""
        return self._path("teachers")

    @property
    def teachers_ensemble(self) -> str:
        """RUN/teachers/ensemble.json (each teacher's and the ensemble's metrics)"""
        return storage.join(self.teachers, "ensemble.json")

    def teacher(self, name: str) -> str:
        """RUN/teachers/<name>"""
        return storage.join(self.teachers, name)

    def teacher_state(self, name: str, e: int) -> str:
        """RUN/teachers/<name>/state=<e> (top-K unobserved items per user at state E_e, e = 1..4)"""
        return storage.join(self.teacher(name), f"state={e}")

    def teacher_observed(self, name: str) -> str:
        """RUN/teachers/<name>/observed (each user's train items in the E4 model's order)"""
        return storage.join(self.teacher(name), "observed")

    def teacher_metrics(self, name: str) -> str:
        """RUN/teachers/<name>/metrics.json"""
        return storage.join(self.teacher(name), "metrics.json")

    def teacher_work(self, name: str) -> str:
        """RUN/teachers/<name>/work (the teacher's training files)"""
        return storage.join(self.teacher(name), "work")

    def teacher_checkpoint(self, name: str) -> str:
        """RUN/teachers/<name>/work/ckpt.pt (weights, optimiser, early-stopping state)"""
        return storage.join(self.teacher_work(name), "ckpt.pt")

    def teacher_snapshot(self, name: str, epoch: int) -> str:
        """RUN/teachers/<name>/work/snap-<epoch:05d>.pt (weights after that epoch)"""
        return storage.join(self.teacher_work(name), f"snap-{epoch:05d}.pt")

    # -------------------------------------------------------------------------------- knowledge
    @property
    def knowledge(self) -> str:
        """RUN/knowledge"""
        return self._path("knowledge")

    @property
    def pos(self) -> str:
        """RUN/knowledge/pos (P+ per user)"""
        return storage.join(self.knowledge, "pos")

    def round(self, r: int, rounds: str | None = None) -> str:
        """RUN/knowledge/round=<r>; for r >= 1 with `rounds` (a `student_rounds`), <rounds>/round=<r>"""
        base = self.knowledge if r == 0 or rounds is None else rounds
        return storage.join(base, f"round={r}")

    @property
    def state_caches(self) -> str:
        """RUN/knowledge/states (round 0's lz4 Arrow IPC copies of the teachers' states)"""
        return storage.join(self.knowledge, "states")

    def state_cache(self, name: str, e: int) -> str:
        """RUN/knowledge/states/<name>/state=<e> (shard-*.arrow)"""
        return storage.join(self.state_caches, name, f"state={e}")

    # ---------------------------------------------------------------------------------- student
    @property
    def students(self) -> str:
        """RUN/student"""
        return self._path("student")

    def student(self, method: str, model: str) -> str:
        """RUN/student/<method>-<model>"""
        return storage.join(self.students, f"{method}-{model}")

    def lambda_candidate(self, method: str, model: str, lam: float) -> str:
        """RUN/student/<method>-<model>/lambda=<lam:g> (one λ_KD of a baseline's grid: a student folder)"""
        return storage.join(self.student(method, model), f"lambda={lam:g}")

    # a student folder is `student(...)`, `lambda_candidate(...)` or any folder a training is sent to
    def student_metrics(self, folder: str) -> str:
        """<student folder>/metrics.jsonl (one line per epoch)"""
        return storage.join(folder, "metrics.jsonl")

    def student_embeddings(self, folder: str) -> str:
        """<student folder>/emb.npz (user, item: the best evaluation's retrieval vectors)"""
        return storage.join(folder, "emb.npz")

    def student_summary(self, folder: str) -> str:
        """<student folder>/model.json (metric, parameter count, best epoch)"""
        return storage.join(folder, "model.json")

    def student_rounds(self, folder: str) -> str:
        """<student folder>/knowledge (the student's own DKC rounds r >= 1: see `round`)"""
        return storage.join(folder, "knowledge")

    def student_dkc_embeddings(self, folder: str, r: int) -> str:
        """<student folder>/dkc/round-<r>.npz (the embeddings DKC round r reads; deleted once it is built)"""
        return storage.join(folder, "dkc", f"round-{r}.npz")

    def student_ray(self, folder: str) -> str:
        """<student folder>/_ray (Ray Train's storage path: its checkpoints)"""
        return storage.join(folder, "_ray")

    def student_local_checkpoint(self, folder: str, training: str) -> str:
        """<student folder>/_local/<training>.pt (local mode's own checkpoint of one training)"""
        return storage.join(folder, "_local", f"{training}.pt")

    # ----------------------------------------------------------------------------------- report
    @property
    def report(self) -> str:
        """RUN/report"""
        return self._path("report")

    @property
    def report_rows(self) -> str:
        """RUN/report/rows (one <method>-<student>.json per result)"""
        return storage.join(self.report, "rows")

    def report_row(self, method: str, student: str) -> str:
        """RUN/report/rows/<method>-<student>.json (student "-" for teachers and the ensemble)"""
        return storage.join(self.report_rows, f"{method}-{student}.json")

    @property
    def report_meta(self) -> str:
        """RUN/report/meta.json (stage times, cost rows, teacher names)"""
        return storage.join(self.report, "meta.json")

    @property
    def report_json(self) -> str:
        """RUN/report/report.json"""
        return storage.join(self.report, "report.json")

    @property
    def report_md(self) -> str:
        """RUN/report/report.md"""
        return storage.join(self.report, "report.md")

    @property
    def curves(self) -> str:
        """RUN/report/curves.png"""
        return storage.join(self.report, "curves.png")

    def student_curves(self, student: str) -> str:
        """RUN/report/curves-<student>.png (Table 2's curves of one student model)"""
        return storage.join(self.report, f"curves-{student}.png")

    def table2(self, student: str) -> str:
        """RUN/report/table2-<student>.md"""
        return storage.join(self.report, f"table2-{student}.md")

    # ------------------------------------------------------------------------ what users take away
    def recommend(self, student: str) -> str:
        """RUN/recommend/<student> (every user's top-K in raw ids, from one student)"""
        return self._path("recommend", student)

    def export(self, student: str) -> str:
        """RUN/export/<student> (a serving bundle: FAISS index and id maps)"""
        return self._path("export", student)
