"""RunLayout: every path of a RUN against hand-written strings (the README's "On-disk layout"), and
every file a tiny real run writes is a path RunLayout names."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from hetcomp_dist import storage
from hetcomp_dist.config import Config, from_dict
from hetcomp_dist.data.dataset import SPLITS, load_manifest
from hetcomp_dist.layout import RunLayout

STUDENT = "student/hetcomp-mf"  # a student folder, relative to RUN (written by hand: the reference)

# (member, call, path relative to RUN); `{S}` is the student folder passed to the per-folder methods
CASES = [
    ("lease", lambda lay, S: lay.lease, "_lease.json"),
    ("data", lambda lay, S: lay.data, "data"),
    ("split", lambda lay, S: lay.split("train"), "data/train"),
    ("split", lambda lay, S: lay.split("test"), "data/test"),
    ("maps", lambda lay, S: lay.maps, "data/maps"),
    ("users_map", lambda lay, S: lay.users_map, "data/maps/users.parquet"),
    ("items_map", lambda lay, S: lay.items_map, "data/maps/items.parquet"),
    ("teachers", lambda lay, S: lay.teachers, "teachers"),
    ("teachers_ensemble", lambda lay, S: lay.teachers_ensemble, "teachers/ensemble.json"),
    ("teacher", lambda lay, S: lay.teacher("mf"), "teachers/mf"),
    ("teacher_state", lambda lay, S: lay.teacher_state("gnn", 3), "teachers/gnn/state=3"),
    ("teacher_observed", lambda lay, S: lay.teacher_observed("ae"), "teachers/ae/observed"),
    ("teacher_metrics", lambda lay, S: lay.teacher_metrics("mf"), "teachers/mf/metrics.json"),
    ("teacher_work", lambda lay, S: lay.teacher_work("iae"), "teachers/iae/work"),
    ("teacher_checkpoint", lambda lay, S: lay.teacher_checkpoint("mf"), "teachers/mf/work/ckpt.pt"),
    ("teacher_snapshot", lambda lay, S: lay.teacher_snapshot("ml", 40), "teachers/ml/work/snap-00040.pt"),
    ("knowledge", lambda lay, S: lay.knowledge, "knowledge"),
    ("pos", lambda lay, S: lay.pos, "knowledge/pos"),
    ("round", lambda lay, S: lay.round(0), "knowledge/round=0"),
    ("round", lambda lay, S: lay.round(2), "knowledge/round=2"),
    ("round", lambda lay, S: lay.round(0, S + "/knowledge"), "knowledge/round=0"),  # round 0 is shared
    ("round", lambda lay, S: lay.round(2, S + "/knowledge"), "student/hetcomp-mf/knowledge/round=2"),
    ("state_caches", lambda lay, S: lay.state_caches, "knowledge/states"),
    ("state_cache", lambda lay, S: lay.state_cache("dnn", 2), "knowledge/states/dnn/state=2"),
    ("students", lambda lay, S: lay.students, "student"),
    ("student", lambda lay, S: lay.student("hetcomp", "mf"), "student/hetcomp-mf"),
    (
        "lambda_candidate",
        lambda lay, S: lay.lambda_candidate("rrd", "ml", 0.001),
        "student/rrd-ml/lambda=0.001",
    ),
    ("lambda_candidate", lambda lay, S: lay.lambda_candidate("rrd", "ml", 1.0), "student/rrd-ml/lambda=1"),
    ("student_metrics", lambda lay, S: lay.student_metrics(S), "student/hetcomp-mf/metrics.jsonl"),
    ("student_embeddings", lambda lay, S: lay.student_embeddings(S), "student/hetcomp-mf/emb.npz"),
    ("student_summary", lambda lay, S: lay.student_summary(S), "student/hetcomp-mf/model.json"),
    ("student_rounds", lambda lay, S: lay.student_rounds(S), "student/hetcomp-mf/knowledge"),
    (
        "student_dkc_embeddings",
        lambda lay, S: lay.student_dkc_embeddings(S, 3),
        "student/hetcomp-mf/dkc/round-3.npz",
    ),
    ("student_ray", lambda lay, S: lay.student_ray(S), "student/hetcomp-mf/_ray"),
    (
        "student_local_checkpoint",
        lambda lay, S: lay.student_local_checkpoint(S, "hetcomp-mf-0123abcd"),
        "student/hetcomp-mf/_local/hetcomp-mf-0123abcd.pt",
    ),
    ("report", lambda lay, S: lay.report, "report"),
    ("report_rows", lambda lay, S: lay.report_rows, "report/rows"),
    ("report_row", lambda lay, S: lay.report_row("hetcomp", "mf"), "report/rows/hetcomp-mf.json"),
    ("report_row", lambda lay, S: lay.report_row("ensemble", "-"), "report/rows/ensemble--.json"),
    ("report_meta", lambda lay, S: lay.report_meta, "report/meta.json"),
    ("report_json", lambda lay, S: lay.report_json, "report/report.json"),
    ("report_md", lambda lay, S: lay.report_md, "report/report.md"),
    ("curves", lambda lay, S: lay.curves, "report/curves.png"),
    ("student_curves", lambda lay, S: lay.student_curves("mf"), "report/curves-mf.png"),
    ("table2", lambda lay, S: lay.table2("dnn"), "report/table2-dnn.md"),
    ("recommend", lambda lay, S: lay.recommend("hetcomp-mf"), "recommend/hetcomp-mf"),
    ("export", lambda lay, S: lay.export("hetcomp-mf"), "export/hetcomp-mf"),
    ("stage", lambda lay, S: lay.stage("data"), "data"),
    ("stage", lambda lay, S: lay.stage("teachers"), "teachers"),
    ("stage", lambda lay, S: lay.stage("knowledge"), "knowledge"),
    ("stage", lambda lay, S: lay.stage("student"), "student"),
    ("stage", lambda lay, S: lay.stage("report"), "report"),
]


@pytest.mark.parametrize("root", ["s3://b/r", "/srv/runs/r"])
@pytest.mark.parametrize("member, call, want", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_path_against_the_readme_layout(root, member, call, want):
    got = call(RunLayout(root), f"{root}/{STUDENT}")
    assert got == f"{root}/{want}"
    # a trailing slash on RUN changes nothing
    assert call(RunLayout(root + "/"), f"{root}/{STUDENT}") == got


def test_the_cases_cover_every_path_of_the_layout():
    members = {m for m in dir(RunLayout) if not m.startswith("_")} - {"run"}
    assert members == {c[0] for c in CASES}


def test_unknown_stage_is_an_error():
    with pytest.raises(ValueError, match="unknown stage 'bogus'"):
        RunLayout("s3://b/r").stage("bogus")


def test_pipeline_stages_each_have_a_folder():
    from hetcomp_dist.pipeline import STAGES

    assert [RunLayout("/r").stage(s) for s in STAGES] == [
        "/r/data",
        "/r/teachers",
        "/r/knowledge",
        "/r/student",
        "/r/report",
    ]


# ---------------------------------------------------------------------------- a tiny real run
def _tiny_config(run: str) -> Config:
    return from_dict(
        Config,
        {
            "run": run,
            "teachers": {
                "names": ["mf", "ml"],
                "dim": 8,
                "max_epochs": 2,
                "eval_every": 1,
                "snapshot_every": 1,
                "patience": 5,
                "keep_snapshots": True,
            },
            "knowledge": {"d_k": 10, "period": 1},
            "student": {"num_workers": 0, "max_epochs": 2, "eval_every": 1, "patience": 5},
            "pipeline": {"students": ["mf"]},
        },
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synth_run):
    """Data (the session's synthetic run), two real teachers of 2 epochs (in-process), their ensemble,
    knowledge round 0, a 2-epoch HetComp student in local mode (two DKC rounds in its folder), and the
    report."""
    from hetcomp_dist.knowledge.rounds import build_round0
    from hetcomp_dist.knowledge.teacher_ensemble import ensemble_report
    from hetcomp_dist.report import report
    from hetcomp_dist.student.trainer import train_student
    from hetcomp_dist.teachers.runner import run_teacher

    run = str(tmp_path_factory.mktemp("layout") / "run")
    layout = RunLayout(run)
    shutil.copytree(RunLayout(synth_run).data, layout.data)
    cfg = _tiny_config(run)
    for name in cfg.teachers.names:
        run_teacher(run, cfg, name)
    ens = ensemble_report(run, cfg)
    build_round0(run, cfg)
    res = train_student(run, cfg)
    for name, metrics in ens["teachers"].items():
        report.add_result(run, name, "-", metrics)
    report.add_result(run, "hetcomp", "mf", res)
    report.write_report(run, cfg.teachers.names, {"student": 1.0})
    return run, cfg


def _named_paths(layout: RunLayout, cfg: Config) -> tuple[set[str], list[str]]:
    """(every file path RunLayout names for this run's teachers, students and rounds; folders whose
    whole content belongs to a library)."""
    from hetcomp_dist.student.trainer import student_hash

    m = load_manifest(layout.run)
    n_shards = storage.n_shards(m["n_users"], m["shard_size"])
    names = cfg.teachers.names
    student = layout.student("hetcomp", "mf")
    rounds = [layout.round(0)] + [layout.round(r, layout.student_rounds(student)) for r in (1, 2, 3)]
    folders = [layout.data, *(layout.split(s) for s in SPLITS), layout.teachers, layout.pos, *rounds, student]
    for name in names:
        folders += [layout.teacher(name), layout.teacher_observed(name)]
        folders += [layout.teacher_state(name, e) for e in range(1, 5)]
        folders += [layout.state_cache(name, e) for e in range(1, 5)]
    files = {storage.manifest_path(f) for f in folders} | {storage.config_path(f) for f in folders}
    files |= {storage.marker_path(f) for f in [*folders, layout.data, layout.knowledge, layout.teachers]}
    files |= {
        storage.shard_path(f, s, suffix)
        for f in folders
        for s in range(n_shards)
        for suffix in (".parquet", ".arrow")
    }
    for name in names:
        files |= {layout.teacher_metrics(name), layout.teacher_checkpoint(name)}
        files |= {layout.teacher_snapshot(name, e) for e in range(1, cfg.teachers.max_epochs + 1)}
    files |= {layout.users_map, layout.items_map, layout.teachers_ensemble}
    files |= {
        layout.student_metrics(student),
        layout.student_embeddings(student),
        layout.student_summary(student),
    }
    files |= {layout.student_dkc_embeddings(student, r) for r in (1, 2, 3)}
    files |= {layout.student_local_checkpoint(student, f"hetcomp-mf-{student_hash(layout.run, cfg)}")}
    rows = [*((n, "-") for n in names), ("ensemble", "-"), ("hetcomp", "mf")]
    files |= {layout.report_row(method, s) for method, s in rows}
    files |= {layout.report_meta, layout.report_json, layout.report_md, layout.curves}
    return files, [layout.student_ray(student)]


def _written(run: str) -> list[str]:
    return sorted(os.path.join(root, f) for root, _dirs, fs in os.walk(run) for f in fs)


def test_every_file_a_tiny_run_writes_is_named(tiny_run):
    from hetcomp_dist.student.trainer import student_hash

    run, cfg = tiny_run
    layout = RunLayout(run)
    files, owned = _named_paths(layout, cfg)
    written = _written(run)
    stray = [p for p in written if p not in files and not any(p.startswith(o + "/") for o in owned)]
    assert stray == []
    # the stages wrote what the layout promises (not only a subset that happens to be named)
    for path in (
        layout.teacher_metrics("mf"),
        layout.teacher_checkpoint("mf"),
        layout.teachers_ensemble,
        layout.teacher_snapshot("ml", 1),
        storage.shard_path(layout.teacher_state("ml", 4), 0),
        storage.shard_path(layout.teacher_observed("mf"), 0),
        storage.shard_path(layout.state_cache("mf", 2), 0, ".arrow"),
        storage.manifest_path(layout.round(1, layout.student_rounds(layout.student("hetcomp", "mf")))),
        layout.student_embeddings(layout.student("hetcomp", "mf")),
        layout.student_local_checkpoint(
            layout.student("hetcomp", "mf"), f"hetcomp-mf-{student_hash(run, cfg)}"
        ),
        layout.report_row("hetcomp", "mf"),
        layout.report_md,
        layout.curves,
    ):
        assert path in written, path


def test_every_file_an_ingest_writes_is_named(tmp_path):
    from hetcomp_dist.config import DataConfig
    from hetcomp_dist.data.ingest import ingest

    rng = np.random.default_rng(0)
    rows = [f"u{u},i{i}" for u in range(30) for i in rng.choice(40, size=8, replace=False)]
    (tmp_path / "in.csv").write_text("user,item\n" + "\n".join(rows) + "\n")
    run = str(tmp_path / "run")
    m = ingest(run, DataConfig(input=str(tmp_path / "in.csv"), format="csv", shard_size=8))
    layout = RunLayout(run)
    shards = {
        storage.shard_path(layout.split(s), i)
        for s in SPLITS
        for i in range(storage.n_shards(m["n_users"], 8))
    }
    named = shards | {storage.manifest_path(layout.data), layout.users_map, layout.items_map}
    assert set(_written(run)) == named | {storage.marker_path(layout.data)}
    # the manifest lists its files by their names inside RUN/data
    assert {storage.join(layout.data, rel) for rel in m["files"]} == named - {
        storage.manifest_path(layout.data)
    }
