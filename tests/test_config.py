"""Typed config: YAML + overrides, unknown keys and wrong types fail with the field's name."""

import dataclasses
import typing
from pathlib import Path

import pytest

from hetcomp_dist import config
from hetcomp_dist.cli.jobs import SMOKE
from hetcomp_dist.config import Config, StudentConfig, TeacherTraining, load_config, validate
from hetcomp_dist.errors import InputError


def test_defaults_are_the_papers():
    c = Config()
    assert (
        c.knowledge.topk,
        c.knowledge.temperature,
        c.knowledge.alpha,
        c.knowledge.decay,
        c.knowledge.period,
    ) == (100, 10.0, 1.05, 0.995, 10)
    assert (c.student.dim, c.student.batch_size, c.student.lr, c.student.weight_decay) == (
        6,
        1024,
        1e-3,
        1e-5,
    )
    assert (c.student.lo_scale, c.student.lf_scale, c.student.logit_clamp) == (0.01, 0.005, 40.0)
    assert c.teachers.names == ("mf", "ml", "dnn", "gnn", "ae", "iae") and c.teachers.dim == 64


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("run: /tmp/x\nstudent:\n  model: ml\n  lr: 0.01\nteachers:\n  names: [mf, ae]\n")
    c = load_config(str(f), ["student.lr=0.5", "knowledge.weights=[1, 2]", "student.use_gpu=true"])
    assert c.run == "/tmp/x" and c.student.model == "ml" and c.student.lr == 0.5
    assert (
        c.teachers.names == ("mf", "ae") and c.knowledge.weights == (1.0, 2.0) and c.student.use_gpu is True
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.student.lr = 1.0  # type: ignore[misc]


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    """``1e-3`` is a number to Python and YAML 1.2 but a string to PyYAML's YAML 1.1: a learning rate
    written that way, in a file or an override, is read as the float it spells (it was refused as
    "expected a number")."""
    f = tmp_path / "c.yaml"
    f.write_text("student:\n  lr: 5e-3\nteachers:\n  iae: {lr: 1E-4}\n")
    c = load_config(
        str(f), ["teachers.lr=2e-2", "student.weight_decay=1.5e-6", "knowledge.weights=[1e0, 2, 3, 4, 5, 6]"]
    )
    assert (c.student.lr, c.teachers.iae.lr, c.teachers.lr) == (0.005, 0.0001, 0.02)
    assert (c.student.weight_decay, c.knowledge.weights[:2]) == (1.5e-6, (1.0, 2.0))
    assert load_config(None, ["student.lr=1e+30"]).student.lr == 1e30
    # still numbers only where they spell one; an int field still refuses a float
    for override, where in (
        ("student.lr=1e", "config.student.lr"),
        ("synth.users=1e5", "config.synth.users"),
    ):
        with pytest.raises(InputError, match=where):
            load_config(None, [override])


@pytest.mark.parametrize(
    "override, field",
    [
        ("student.modle=mf", "config.student.modle"),
        ("student.dim=six", "config.student.dim"),
        ("student.dim=6.5", "config.student.dim"),
        ("student.model=gbdt", "config.student.model"),
        ("teachers.names=[mf, ../xyz]", "config.teachers.names"),
        ("knowledge.weights=[1, 2, 3]", "config.knowledge.weights"),
        ("nosection.key=1", "config.nosection"),
        ("student.use_gpu=1", "config.student.use_gpu"),
        ("student.lambda_grid=[0.1, 1", "override student.lambda_grid"),
        ("teachers.iknn_k=0", "config.teachers.iknn_k"),
        ("teachers.rp3_k=0", "config.teachers.rp3_k"),
        ("teachers.iknn_shrink=-1", "config.teachers.iknn_shrink"),
        ("teachers.rp3_beta=-0.1", "config.teachers.rp3_beta"),
        ("teachers.als_reg=-1", "config.teachers.als_reg"),
        ("report.als_alphas=[]", "config.report.als_alphas"),
        ("report.als_regs=[1, -1]", "config.report.als_regs"),
        ("report.als_iterations=0", "config.report.als_iterations"),
        ("report.als_dims=[6, 0]", "config.report.als_dims[1]"),
        ("student.tail_kernel=numba", "config.student.tail_kernel"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(InputError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(field)


@pytest.mark.parametrize("other", ["student.use_gpu=true", "student.logit_clamp=100"])
def test_fused_tail_kernel_only_where_it_runs(other):
    with pytest.raises(InputError, match="^config.student.tail_kernel: fused runs on CPU"):
        load_config(None, ["student.tail_kernel=fused", other])
    assert load_config(None, ["student.tail_kernel=auto", other]).student.tail_kernel == "auto"


# out-of-range values: (override, the field the error names); the first seven are issue 21's examples
OUT_OF_RANGE = [
    ("teachers.lr=.nan", "config.teachers.lr"),
    ("student.lr=-1", "config.student.lr"),
    ("knowledge.period=0", "config.knowledge.period"),
    ("knowledge.temperature=.nan", "config.knowledge.temperature"),
    ("data.test_frac=-0.1", "config.data.test_frac"),
    ("eval.ks=[0]", "config.eval.ks[0]"),
    ("student.weight_decay=.inf", "config.student.weight_decay"),
    ("data.valid_frac=1.0", "config.data.valid_frac"),
    ("data.test_frac=0.8", "config.data.test_frac"),  # test + valid = 1
    ("data.shard_size=0", "config.data.shard_size"),
    ("data.min_user_interactions=0", "config.data.min_user_interactions"),
    ("data.seed=-1", "config.data.seed"),
    ("data.rating_threshold=.nan", "config.data.rating_threshold"),
    ("data.csv_delimiter=;;", "config.data.csv_delimiter"),
    ("synth.users=0", "config.synth.users"),
    ("synth.items=2147483648", "config.synth.items"),
    ("synth.mixture=[0.5, .nan, 0.5]", "config.synth.mixture[1]"),
    ("synth.mixture=[0.5, 0.5]", "config.synth.mixture"),
    ("synth.topic_concentration=0", "config.synth.topic_concentration"),
    ("synth.mean_interactions=.inf", "config.synth.mean_interactions"),
    ("eval.ks=[10]", "config.eval.ks"),
    ("eval.ks=[10, 50, 10]", "config.eval.ks"),
    ("eval.batch_size=0", "config.eval.batch_size"),
    ("eval.hnsw_m=1", "config.eval.hnsw_m"),
    ("eval.ivf_nprobe=0", "config.eval.ivf_nprobe"),
    ("teachers.lr=0", "config.teachers.lr"),
    ("teachers.l2=-.inf", "config.teachers.l2"),
    ("teachers.mf.lr=-0.5", "config.teachers.mf.lr"),
    ("teachers.gnn.l2=.nan", "config.teachers.gnn.l2"),
    ("teachers.ae.batch_size=-1", "config.teachers.ae.batch_size"),
    ("teachers.dim=0", "config.teachers.dim"),
    ("teachers.topk=0", "config.teachers.topk"),
    ("teachers.patience=0", "config.teachers.patience"),
    ("teachers.snapshot_every=3", "config.teachers.mf.snapshot_every"),  # does not divide eval_every
    ("teachers.num_cpus=0", "config.teachers.num_cpus"),
    ("teachers.num_gpus=.nan", "config.teachers.num_gpus"),
    ("teachers.max_restarts=-1", "config.teachers.max_restarts"),
    ("teachers.ae_dropout=1.0", "config.teachers.ae_dropout"),
    ("teachers.ae_hidden=0", "config.teachers.ae_hidden"),
    ("teachers.dnn_layers=0", "config.teachers.dnn_layers"),
    ("teachers.cml_negatives=0", "config.teachers.cml_negatives"),
    ("teachers.progress_every_s=0", "config.teachers.progress_every_s"),
    ("knowledge.topk=200", "config.knowledge.topk"),  # not teachers.topk
    ("knowledge.topk=80", "config.knowledge.topk"),
    ("knowledge.d_k=101", "config.knowledge.d_k"),  # above knowledge.topk
    ("knowledge.decay=0", "config.knowledge.decay"),
    ("knowledge.decay=1.5", "config.knowledge.decay"),
    ("knowledge.alpha=-1", "config.knowledge.alpha"),
    ("knowledge.weights=[1, 1, 1, 1, 1, .nan]", "config.knowledge.weights[5]"),
    ("knowledge.weights=[0, 0, 0, 0, 0, 0]", "config.knowledge.weights"),
    ("knowledge.pos_k=0", "config.knowledge.pos_k"),
    ("knowledge.task_cpus=0", "config.knowledge.task_cpus"),
    ("knowledge.batch_users=0", "config.knowledge.batch_users"),
    ("knowledge.d_lambda=.nan", "config.knowledge.d_lambda"),
    ("student.dim=0", "config.student.dim"),
    ("student.batch_size=0", "config.student.batch_size"),
    ("student.patience=0", "config.student.patience"),
    ("student.lr_drops=-1", "config.student.lr_drops"),
    ("student.lr_drop_factor=1.0", "config.student.lr_drop_factor"),
    ("student.lr_drop_factor=0", "config.student.lr_drop_factor"),
    ("student.eval_every=0", "config.student.eval_every"),
    ("student.lambda_grid=[0.1, -1.0]", "config.student.lambda_grid[1]"),
    ("student.lambda_grid=[]", "config.student.lambda_grid"),  # lambda_kd < 0 searches it
    ("student.lambda_kd=.nan", "config.student.lambda_kd"),
    ("student.num_workers=-1", "config.student.num_workers"),
    ("student.cpus_per_worker=0", "config.student.cpus_per_worker"),
    ("student.logit_clamp=0", "config.student.logit_clamp"),
    ("student.tail_samples=0", "config.student.tail_samples"),
    ("student.dnn_hidden=[0]", "config.student.dnn_hidden[0]"),
    ("student.max_failures=-1", "config.student.max_failures"),
    ("student.lo_topk=101", "config.student.lo_topk"),  # above knowledge.topk
    ("student.lo_topk=-1", "config.student.lo_topk"),
    ("teachers.export_recall_target=1.5", "config.teachers.export_recall_target"),
    ("baselines.topk=101", "config.baselines.topk"),  # above teachers.topk
    ("baselines.rd_top=101", "config.baselines.rd_top"),  # above baselines.topk
    ("baselines.dcd_eps=.inf", "config.baselines.dcd_eps"),
    ("baselines.rd_mu=0", "config.baselines.rd_mu"),
    ("baselines.mtd_entropy=-0.1", "config.baselines.mtd_entropy"),
    ("pipeline.cost_users=-1", "config.pipeline.cost_users"),
]


@pytest.mark.parametrize("override, field", OUT_OF_RANGE)
def test_out_of_range_values_name_the_field_and_the_range(override, field):
    with pytest.raises(InputError) as e:
        load_config(None, [override])
    assert e.value.where == field and e.value.problem


def test_a_recall_target_needs_users_to_measure_it_on():
    with pytest.raises(InputError) as e:
        load_config(None, ["teachers.export_recall_target=0.95", "teachers.export_recall_users=0"])
    assert e.value.where == "config.teachers.export_recall_target" and "export_recall_users" in e.value.fix
    load_config(None, ["teachers.export_recall_target=0.95", "teachers.export_recall_users=10"])


def test_the_teachers_exports_must_fill_the_ensembles_list():
    ok = [
        "teachers.names=[mf, ml]",
        "teachers.topk=25",
        "knowledge.topk=25",
        "knowledge.d_k=10",
        "baselines.topk=25",
    ]
    load_config(None, ok)  # 2 teachers x 25 items can fill a top-50
    with pytest.raises(InputError) as e:
        load_config(None, [*ok, "teachers.topk=24", "knowledge.topk=24", "baselines.topk=24"])
    assert e.value.where == "config.teachers.topk"


def _yaml_configs():
    root = Path(__file__).resolve().parents[1]
    return sorted((root / "hetcomp_dist" / "configs").glob("*.yaml")) + [root / "cluster" / "pipeline.yaml"]


@pytest.mark.parametrize("path", _yaml_configs(), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    load_config(str(path))
    load_config(str(path), list(SMOKE))


def test_defaults_and_the_smoke_preset_validate():
    validate(Config())
    load_config(None, list(SMOKE))


SECTIONS = [tp for name, tp in typing.get_type_hints(Config).items() if name != "run"] + [TeacherTraining]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda tp: tp.__name__)
def test_every_numeric_field_has_a_range(section):
    """A new int or float field (or a tuple of them) needs a `ranged` default; CL-DRD's stages are
    checked by hand."""
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        tp = hints[f.name]
        numeric = tp in (int, float) or typing.get_args(tp) in ((int, ...), (float, ...))
        assert numeric == ("range" in f.metadata) or f.name == "cldrd_stages", f.name


def test_d_k_bound_is_the_discrepancy_kernels():
    from hetcomp_dist.knowledge import discrepancy

    assert config.MAX_D_K == discrepancy.MAX_D_K - 1


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        load_config(str(lst))


def test_method_lr_picks_the_methods_learning_rate_and_keeps_the_hash(tmp_path):
    from hetcomp_dist.config import student_lr

    c = load_config(None, ["student.lr=0.005", "student.method_lr=[wokd=0.001, rd=2e-3]"])
    by = {m: student_lr(dataclasses.replace(c.student, method=m)) for m in ("hetcomp", "wokd", "rd", "dcd")}
    assert by == {"hetcomp": 0.005, "wokd": 0.001, "rd": 0.002, "dcd": 0.005}
    # the training's identity is the learning rate it uses: a table entry for another method, or the
    # same rate given through the table, leaves a student's hash unchanged
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.student.trainer import student_hash

    run = str(tmp_path / "run")
    base = load_config(None, [f"run={run}", "synth.users=60", "synth.items=40", "student.method=wokd"])
    synthesize(run, base.synth, base.data)
    h = student_hash(run, base)
    assert (
        student_hash(
            run,
            dataclasses.replace(base, student=dataclasses.replace(base.student, method_lr=("hetcomp=0.01",))),
        )
        == h
    )
    assert (
        student_hash(
            run,
            dataclasses.replace(
                base, student=dataclasses.replace(base.student, lr=0.5, method_lr=("wokd=0.001",))
            ),
        )
        == h
    )
    assert (
        student_hash(
            run,
            dataclasses.replace(base, student=dataclasses.replace(base.student, method_lr=("wokd=0.002",))),
        )
        != h
    )


def test_ml_clip_in_the_hash_is_the_one_the_model_trains_with(tmp_path):
    """HetComp's ML student trains unclipped whatever ml_max_norm says, so its hash ignores it; w/o KD's
    does not."""
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.student.trainer import student_hash

    run = str(tmp_path / "run")
    base = load_config(None, [f"run={run}", "synth.users=60", "synth.items=40", "student.model=ml"])
    synthesize(run, base.synth, base.data)

    def h(method, norm):
        return student_hash(
            run,
            dataclasses.replace(
                base, student=dataclasses.replace(base.student, method=method, ml_max_norm=norm)
            ),
        )

    assert h("hetcomp", 1.0) == h("hetcomp", 0.0) == h("hetcomp", 2.0)
    assert len({h("wokd", 1.0), h("wokd", 0.0), h("wokd", 2.0)}) == 3


# student fields outside a training's hash: how fast it runs, and which trainings a λ_KD search runs
_NOT_HASHED = (
    "cpus_per_worker",
    "threads_per_worker",
    "max_failures",
    "tail_chunk",
    "tail_kernel",
    "lambda_grid",
    "lambda_prune_epoch",
)
# valid changed values where "different" is not enough (a base of w/o KD, MF, exact tail)
_CHANGED = {
    "model": "dnn",
    "method": "hetcomp",
    "tail": "sampled",
    "tail_kernel": "torch",
    "method_lr": ("wokd=0.5",),
    "lr_drop_factor": 0.5,
}
# settings that only act beside another: their base sets it (lr_drop_factor without drops is unused,
# and test_student_train checks it stays out of the hash then)
_BASE_FOR = {"lr_drop_factor": ["student.lr_drops=1"]}


def _changed(name, value):
    if name in _CHANGED:
        return _CHANGED[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value + value[:1]
    raise AssertionError(f"no changed value for student.{name} = {value!r}")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(StudentConfig)])
def test_every_student_setting_enters_the_hash_as_it_is(tmp_path, name):
    """A changed student setting changes the training's hash (a new field included), except the
    mechanics and the λ_KD search's own settings."""
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.student.trainer import student_hash

    run = str(tmp_path / "run")
    base = load_config(
        None,
        [f"run={run}", "synth.users=60", "synth.items=40", "student.method=wokd", *_BASE_FOR.get(name, [])],
    )
    synthesize(run, base.synth, base.data)
    value = _changed(name, getattr(base.student, name))
    other = dataclasses.replace(base, student=dataclasses.replace(base.student, **{name: value}))
    assert (student_hash(run, other) == student_hash(run, base)) == (name in _NOT_HASHED)


def test_a_grid_candidate_hash_holds_its_lambda_not_the_grid(tmp_path):
    """Narrowing or extending student.lambda_grid must not rerun a finished candidate; its λ_KD must."""
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.student import lambda_grid
    from hetcomp_dist.student.trainer import student_hash

    run = str(tmp_path / "run")
    base = load_config(None, [f"run={run}", "synth.users=60", "synth.items=40", "student.method=rd"])
    synthesize(run, base.synth, base.data)

    def cand(lam, grid):
        return lambda_grid.with_lambda(
            dataclasses.replace(base, student=dataclasses.replace(base.student, lambda_grid=grid)), lam
        )

    h = student_hash(run, cand(0.1, (1e-3, 1e-2, 1e-1, 1.0)))
    assert student_hash(run, cand(0.1, (0.1,))) == h == student_hash(run, cand(0.1, (0.1, 10.0)))
    assert student_hash(run, cand(1.0, (0.1,))) != h
    pruned = cand(0.1, (0.1,))  # pruning says how long the search trains a candidate, not what it is
    assert (
        student_hash(
            run,
            dataclasses.replace(pruned, student=dataclasses.replace(pruned.student, lambda_prune_epoch=50)),
        )
        == h
    )
    # the grid's own identity still follows its values (the choice among them reruns)
    g = dataclasses.replace(base, student=dataclasses.replace(base.student, lambda_kd=-1.0))
    narrowed = dataclasses.replace(g, student=dataclasses.replace(g.student, lambda_grid=(0.1, 1.0)))
    assert lambda_grid.grid_hash(run, g, student_hash) != lambda_grid.grid_hash(run, narrowed, student_hash)
    prune = dataclasses.replace(g, student=dataclasses.replace(g.student, lambda_prune_epoch=50))
    assert lambda_grid.grid_hash(run, g, student_hash) != lambda_grid.grid_hash(run, prune, student_hash)


@pytest.mark.parametrize("entry", ["wokd", "teacher=0.001", "wokd=0", "wokd=-1", "wokd=abc", "wokd=inf"])
def test_bad_method_lr_names_the_entry(entry):
    with pytest.raises(InputError, match=r"student\.method_lr\[0\]"):
        load_config(None, [f"student.method_lr=[{entry}]"])
    with pytest.raises(InputError, match=r"student\.method_lr\[1\]"):
        load_config(None, ["student.method_lr=[wokd=0.001, wokd=0.002]"])


def test_input_error_survives_pickling():
    """Ray pickles a task's exception to re-raise it in the driver: the message and fix must arrive."""
    import pickle

    e = pickle.loads(
        pickle.dumps(InputError("RUN/knowledge/round=3", "not committed", "build the rounds in order"))
    )
    assert isinstance(e, InputError) and (e.where, e.problem, e.fix) == (
        "RUN/knowledge/round=3",
        "not committed",
        "build the rounds in order",
    )
    assert str(e) == "RUN/knowledge/round=3: not committed -- build the rounds in order"


def test_input_error_reaches_the_driver_through_ray(ray_session):
    import ray

    @ray.remote(num_cpus=0)
    def fails():
        raise InputError("RUN/x", "broken", "fix it")

    with pytest.raises(InputError) as e:
        ray.get(fails.remote())
    assert (e.value.where, e.value.problem, e.value.fix) == ("RUN/x", "broken", "fix it")
