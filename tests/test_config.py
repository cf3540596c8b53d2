"""Typed config: YAML + overrides, unknown keys and wrong types fail with the field's name."""

import dataclasses

import pytest

from hetcomp_dist.config import Config, StudentConfig, load_config
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


@pytest.mark.parametrize(
    "override, field",
    [
        ("student.modle=mf", "config.student.modle"),
        ("student.dim=six", "config.student.dim"),
        ("student.dim=6.5", "config.student.dim"),
        ("student.model=gbdt", "config.student.model"),
        ("teachers.names=[mf, xyz]", "config.teachers.names"),
        ("knowledge.weights=[1, 2, 3]", "config.knowledge.weights"),
        ("nosection.key=1", "config.nosection"),
        ("student.use_gpu=1", "config.student.use_gpu"),
        ("teachers.iknn_k=0", "config.teachers.iknn_k"),
        ("teachers.als_reg=-1", "config.teachers.als_reg"),
        ("report.als_alphas=[]", "config.report.als_alphas"),
        ("report.als_regs=[1, -1]", "config.report.als_regs"),
        ("report.als_iterations=0", "config.report.als_iterations"),
        ("report.als_dims=[6, 0]", "config.report.als_dims[1]"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(InputError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(field)


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
    "lambda_grid",
    "lambda_prune_epoch",
)
# valid changed values where "different" is not enough (a base of w/o KD, MF, exact tail)
_CHANGED = {"model": "dnn", "method": "hetcomp", "tail": "sampled", "method_lr": ("wokd=0.5",)}


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
    base = load_config(None, [f"run={run}", "synth.users=60", "synth.items=40", "student.method=wokd"])
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


@pytest.mark.parametrize("entry", ["wokd", "teacher=0.001", "wokd=0", "wokd=-1", "wokd=abc"])
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
