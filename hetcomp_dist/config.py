"""One typed, frozen configuration, loaded from YAML, with type-checked ``key=value`` overrides.

Every hyperparameter of METHOD.md lives here with the paper's value as its default. Unknown keys and
wrong types fail with the dotted field name and the accepted keys/type, before anything runs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from hetcomp_dist.errors import InputError

PAPER_TEACHERS = ("mf", "ml", "dnn", "gnn", "ae", "iae")  # the paper's six: the default teachers
TEACHER_NAMES = (*PAPER_TEACHERS, "als", "iknn")  # every teacher family the package trains
BASELINES = ("rd", "rrd", "mtd", "cldrd", "dcd")  # the paper's comparison methods (METHOD.md §4)
STUDENT_METHODS = ("hetcomp", "wokd", *BASELINES)


@dataclass(frozen=True)
class DataConfig:
    """Ingestion (METHOD.md §1)."""

    input: str = ""  # path or URI of the interactions; "" = the built-in synthetic preset
    format: str = "synthetic"  # citeulike | csv | parquet | synthetic
    user_col: str = "user"
    item_col: str = "item"
    rating_col: str = ""  # "" = every row is a positive interaction
    rating_threshold: float = 0.0  # keep rows with rating >= threshold
    csv_delimiter: str = ","
    min_user_interactions: int = 5
    test_frac: float = 0.2
    valid_frac: float = 0.2
    seed: int = 0
    shard_size: int = 50_000  # users per shard, fixed per run


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic generator; the defaults are the small built-in demo dataset."""

    users: int = 3000
    items: int = 2000
    seed: int = 0
    mean_interactions: float = 20.0
    min_interactions: int = 5  # user activity: truncated discrete Pareto from here ...
    max_interactions: int = 1000  # ... to min(this, items // 4)
    pop_exponent: float = 1.0  # Zipf exponent of item popularity
    structure_pop_bias: float = 0.25  # popularity exponent inside topics and neighbourhoods (0 = none)
    topics: int = 16  # rank of the low-rank (topic) part
    topic_concentration: float = 0.1  # Dirichlet alpha of user and item topic mixtures (small = sparse)
    topic_exponent: float = 0.5  # Zipf exponent of the within-topic item order (a head of core items)
    community_size: int = 50  # items per neighbourhood (the cluster part)
    mixture: tuple[float, ...] = (0.1, 0.4, 0.5)  # mean share of popularity / topic / neighbourhood draws


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 50)
    batch_size: int = 4096  # users per retrieval batch
    index: str = (
        "flat"  # flat (exact FAISS) | blocked (exact FAISS, norm-pruned) | pruned (exact torch) | ivf | hnsw
    )
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    hnsw_m: int = 32
    hnsw_ef_search: int = 256
    distributed_min_users: int = 200_000  # below this, evaluate in-process (Ray's fixed costs are seconds)


@dataclass(frozen=True)
class TeacherTraining:
    """Per-teacher training overrides; 0 (l2: < 0) means "use the shared value in TeachersConfig".

    `batch_size` counts what the model's batches hold: train interactions (mf, ml, dnn, gnn), users
    (ae, als: users per block of its objective) or items (iae); lr and l2 mean nothing to als and iknn,
    which fit themselves (one ALS iteration is one epoch; item-kNN is computed in its one epoch).
    """

    lr: float = 0.0
    batch_size: int = 0
    l2: float = -1.0
    eval_every: int = 0
    snapshot_every: int = 0
    max_epochs: int = 0


@dataclass(frozen=True)
class TeachersConfig:
    """Teachers (METHOD.md §2); one Ray actor each."""

    names: tuple[str, ...] = PAPER_TEACHERS  # any of TEACHER_NAMES
    dim: int = 64
    topk: int = 100  # K of the exported trajectory
    lr: float = 1e-3
    l2: float = 1e-6
    batch_size: int = 1024
    max_epochs: int = 1000
    eval_every: int = 10
    patience: int = 5  # evaluations without valid R@50 improvement
    snapshot_every: int = 10  # epochs between trajectory snapshots (must divide every eval_every)
    num_cpus: float = 0.3  # per actor
    num_gpus: float = -1.0  # per actor; < 0 = auto: a share of the cluster's GPUs when it has any, else 0
    max_restarts: int = 3
    seed: int = 0
    export_batch_size: int = 1024  # users per scoring block in the trajectory export
    keep_snapshots: bool = False  # False: after the export keep only the four state snapshots
    progress_every_s: float = 10.0  # driver's progress table period
    # model-specific
    cml_margin: float = 1.0
    cml_negatives: int = 1  # sampled negatives per triple; the hinge uses the closest one
    dnn_negatives: int = 4
    dnn_layers: int = 3
    dnn_mlp_dim: int = 32  # per-side id embedding of the MLP tower (input 2x this, halving per layer)
    gnn_layers: int = 3
    ae_hidden: int = 600
    ae_decoder_hidden: int = 0  # 0 = linear decoder latent -> items; > 0 = latent -> hidden -> items
    ae_dropout: float = 0.5
    ae_beta: float = 0.2
    ae_anneal_steps: int = 20_000
    ae_variant: str = "vae"  # vae | cdae
    als_alpha: float = 100.0  # ALS confidence c = 1 + alpha * x for a train interaction (Hu et al. 2008)
    als_reg: float = 30.0  # ALS L2 weight lambda on every factor row (implicit's `regularization`)
    iknn_k: int = 100  # item-kNN: neighbours kept per item (cosine over the train lists)
    # per-teacher training overrides (see TeacherTraining)
    mf: TeacherTraining = field(default_factory=TeacherTraining)
    ml: TeacherTraining = field(default_factory=TeacherTraining)
    dnn: TeacherTraining = field(default_factory=TeacherTraining)
    gnn: TeacherTraining = field(default_factory=TeacherTraining)
    ae: TeacherTraining = field(default_factory=TeacherTraining)
    iae: TeacherTraining = field(default_factory=TeacherTraining)
    # ALS: one epoch is one ALS iteration, and it converges in a few: evaluate and snapshot each
    als: TeacherTraining = field(
        default_factory=lambda: TeacherTraining(max_epochs=50, eval_every=1, snapshot_every=1)
    )
    # item-kNN: its one state, computed in one epoch (models/iknn.py says why it has no trajectory)
    iknn: TeacherTraining = field(
        default_factory=lambda: TeacherTraining(max_epochs=1, eval_every=1, snapshot_every=1)
    )


@dataclass(frozen=True)
class KnowledgeConfig:
    """Ensemble g, P+, D@K and DKC (METHOD.md §3)."""

    topk: int = 100  # K of the targets T_u
    temperature: float = 10.0  # T of the rank importance exp(-r/T)
    weights: tuple[float, ...] = ()  # per-teacher w_x; () = all 1
    pos_k: int = 10  # |P+| = K // 10
    d_k: int = 50  # K of the discrepancy D@K
    d_variant: str = "code"  # code | paper
    d_lambda: float = 10.0  # lambda of the paper variant's relevance exp(-r/lambda)
    move_rule: str = "code"  # code (decayed threshold, or rho < 1) | paper (rho > alpha)
    alpha: float = 1.05
    decay: float = 0.995
    period: int = 10  # p: DKC every p epochs, from epoch p on
    distributed_min_users: int = 200_000  # below this, rounds run in-process
    batch_users: int = 2048  # users per vectorised batch inside a shard task
    task_cpus: float = 1.0  # Ray CPUs per shard task
    max_tasks: int = 0  # concurrent shard tasks (0 = as many as the cluster's CPUs allow)
    # round 0 copies the teachers' states to RUN/knowledge/states (lz4 Arrow IPC), which every DKC round
    # reads instead of decoding Parquet (~5x faster; on disk about the teachers' Parquet size again up
    # to 65,535 items, twice it past that); takes effect when round 0 is built
    cache_states: bool = True


@dataclass(frozen=True)
class StudentConfig:
    """Student training (METHOD.md §3)."""

    model: str = "mf"  # mf | ml | dnn
    method: str = "hetcomp"  # hetcomp | wokd | rd | rrd | mtd | cldrd | dcd
    dim: int = 6
    lr: float = 1e-3
    method_lr: tuple[
        str, ...
    ] = ()  # per-method learning rates "method=lr" (e.g. "wokd=0.001"); others use lr
    weight_decay: float = 1e-5
    batch_size: int = 1024  # train interactions per batch (its unique users are used)
    max_epochs: int = 1000
    eval_every: int = 10
    patience: int = 5
    logit_clamp: float = 40.0
    lo_scale: float = 0.01
    lf_scale: float = 0.005
    tail: str = "exact"  # exact | sampled
    tail_samples: int = 4096  # sampled tail: uniform sample of N_u, scaled
    lambda_kd: float = -1.0  # baselines: < 0 = pick from lambda_grid on validation
    lambda_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    # λ grid pruning: every candidate trains this many epochs (a multiple of eval_every), then only the one
    # with the best validation R@50 so far trains on to early stopping; 0 = every candidate trains to the end
    lambda_prune_epoch: int = 0
    num_workers: int = 2  # Ray Train workers (0 = in the driver, no DDP)
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    seed: int = 0
    # students (METHOD.md §2) and the trainer's mechanics
    ml_margin: float = 1.0  # ML student's hinge margin m (w/o KD)
    ml_max_norm: float = 1.0  # ML student's rows renormalised into this ball after each step, where the
    # objective trains CML's hinge (w/o KD, baselines; not HetComp: objectives.model_config); 0 = off
    dnn_hidden: tuple[int, ...] = (12,)  # DNN student's tower hidden widths (dim -> hidden... -> dim)
    dnn_residual: bool = (
        True  # DNN student: towers add their input back (a_u = e_u + f(e_u)); False = plain towers
    )
    tail_chunk: int = 0  # items per block of the exact tail sums; 0 = auto (CPU: L2-sized, GPU: all)
    threads_per_worker: int = 0  # torch threads per Train worker; 0 = max(1, floor(cpus_per_worker))
    max_failures: int = 3  # Ray Train FailureConfig: worker-group restarts from the last checkpoint


@dataclass(frozen=True)
class BaselinesConfig:
    """The comparison methods' own settings (METHOD.md §4); their λ_KD is student.lambda_kd."""

    topk: int = 100  # K of the distilled teacher lists (E4 ensemble top-K; MTD: each teacher's top-K)
    rd_top: int = 10  # RD: the teacher's top items used as positives
    rd_lambda: float = 1.0  # RD: static position weight exp(-r / rd_lambda)
    rd_mu: float = 0.1  # RD: dynamic weight tanh(max(mu (r_hat - r), 0))
    rd_warmup: int = 10  # RD: the dynamic weight applies after this many epochs
    rd_samples: int = 100  # RD: random items for the student's rank estimate r_hat
    mtd_entropy: float = 0.01  # MTD: weight of the entropy bonus on the per-user teacher weights
    cldrd_stages: tuple[tuple[int, ...], ...] = (
        (5, 12, 13),
        (10, 10, 10),
        (20, 5, 5),
    )  # (fine, coarse, negatives)
    cldrd_patience: int = 1  # CL-DRD: evaluations without a new best valid R@50 before the next stage
    dcd_eps: float = 10.0  # DCD: weight tanh(|rank gap| / eps)
    rank_block: int = 512  # DCD: users per scoring block when refreshing the student's ranks


@dataclass(frozen=True)
class PipelineConfig:
    """What `hetcomp-dist run` trains after the teachers and the knowledge."""

    students: tuple[str, ...] = ("mf", "ml", "dnn")
    methods: tuple[str, ...] = ("hetcomp", "wokd")
    cost_users: int = 0  # users timed for the inference-cost table; 0 = every test user


@dataclass(frozen=True)
class ReportConfig:
    """The report's small-model baseline: implicit's ALS at the student's and at the teachers' dimension,
    each dimension's setting picked on valid R@50 by a small grid (report/als_baseline.py)."""

    als_baseline: bool = True  # computed by the report stage of `hetcomp-dist run`
    als_dims: tuple[int, ...] = ()  # () = (student.dim, teachers.dim)
    als_alphas: tuple[float, ...] = (10.0, 40.0, 100.0)  # confidence 1 + alpha (teachers.als_alpha)
    als_regs: tuple[float, ...] = (0.1, 3.0, 30.0)  # L2 weight (teachers.als_reg)
    als_iterations: int = 15  # most ALS iterations of one grid point
    als_eval_every: int = 5  # iterations between its valid evaluations (the last one is always evaluated)
    als_patience: int = 1  # evaluations without a better valid R@50 before a grid point stops


@dataclass(frozen=True)
class Config:
    run: str = "runs/default"  # RUN: local path or s3:// / gs:// URI
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


# ------------------------------------------------------------------------------------ loading
def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise InputError(where, f"expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check(value, arg, where)
            except InputError:
                pass
        raise InputError(where, f"expected {tp}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise InputError(where, f"expected null, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"expected a list, got {value!r}", "write it as [a, b, ...]")
        (arg, *_rest) = typing.get_args(tp)
        return tuple(_check(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(where, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(where, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(where, f"expected a string, got {value!r}", "quote it")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def from_dict(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    """Builds dataclass `cls` from a nested mapping, type-checking every field; unknown keys fail.

    A nested section sets only the keys it gives over its field's default (``teachers.als: {max_epochs:
    30}`` keeps the ALS section's other defaults).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise InputError(f"{where}.{key}", "unknown key", f"valid keys: {', '.join(fields)}")
        kwargs[key] = _check(value, hints[key], f"{where}.{key}")
        default = fields[key].default_factory
        if dataclasses.is_dataclass(hints[key]) and default is not dataclasses.MISSING:
            given = {k: getattr(kwargs[key], k) for k in value}
            kwargs[key] = dataclasses.replace(default(), **given)
    return validate(cls(**kwargs), where) if cls is Config else cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies ``section.key=value`` strings (value parsed as YAML) onto a nested dict."""
    raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for ov in overrides:
        if "=" not in ov:
            raise InputError(f"override {ov!r}", "expected key=value", "e.g. student.model=ml")
        key, _, text = ov.partition("=")
        value = yaml.safe_load(text) if text else ""
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"override {key}", f"{p} is not a section")
        node[parts[-1]] = value
    return raw


def load_config(
    path: str | None = None, overrides: list[str] | tuple[str, ...] = (), run: str | None = None
) -> Config:
    """Config from an optional YAML file plus overrides (then `run`, taken verbatim, when given); every
    field checked, local paths made absolute."""
    raw: dict = {}
    if path:
        from hetcomp_dist import storage

        if not storage.exists(path):
            raise InputError(path, "config file not found", "pass --config with an existing YAML file")
        try:
            raw = yaml.safe_load(storage.read_bytes(path)) or {}
        except yaml.YAMLError as e:
            raise InputError(path, f"not valid YAML ({e})") from e
        if not isinstance(raw, dict):
            raise InputError(path, "the top level must be a mapping of sections")
    cfg = from_dict(Config, apply_overrides(raw, list(overrides)))
    return with_absolute_paths(cfg if run is None else dataclasses.replace(cfg, run=run))


def with_absolute_paths(cfg: Config) -> Config:
    """`cfg` with its local paths (``run``, ``data.input``) absolute: done in the driver, before Ray
    workers, whose working directories differ, see them (`storage.absolute`)."""
    from hetcomp_dist import storage

    data = dataclasses.replace(cfg.data, input=storage.absolute(cfg.data.input, where="data.input"))
    return dataclasses.replace(cfg, run=storage.absolute(cfg.run, output=True, where="run"), data=data)


def student_lr(s: StudentConfig, where: str = "student.method_lr") -> float:
    """The learning rate of `s.method`: its ``method=lr`` entry of `s.method_lr`, else `s.lr`.

    Raises InputError naming the entry when one is malformed, names an unknown or repeated method,
    or gives a learning rate that is not > 0.
    """
    lrs: dict[str, float] = {}
    for i, entry in enumerate(s.method_lr):
        method, eq, text = entry.partition("=")
        method = method.strip()
        try:
            lr = float(text) if eq else float("nan")
        except ValueError:
            lr = float("nan")
        if method not in STUDENT_METHODS or not lr > 0 or method in lrs:
            raise InputError(
                f"{where}[{i}]",
                f"{entry!r} is not a unique 'method=lr' with lr > 0 and method "
                f"one of {', '.join(STUDENT_METHODS)}",
                "e.g. student.method_lr=[wokd=0.001]",
            )
        lrs[method] = lr
    return lrs.get(s.method, s.lr)


def validate(cfg: Config, where: str = "config") -> Config:
    """Checks value ranges and choices that types alone cannot."""

    def choice(name: str, value: str, options: tuple[str, ...]) -> None:
        if value not in options:
            raise InputError(f"{where}.{name}", f"{value!r} is not one of {', '.join(options)}")

    def positive(name: str, value: float) -> None:
        if value <= 0:
            raise InputError(f"{where}.{name}", f"must be > 0, got {value}")

    choice("data.format", cfg.data.format, ("citeulike", "csv", "parquet", "synthetic"))
    positive("data.shard_size", cfg.data.shard_size)
    if not 0 < cfg.data.test_frac + cfg.data.valid_frac < 1:
        raise InputError(f"{where}.data.test_frac", "test_frac + valid_frac must be in (0, 1)")
    choice("eval.index", cfg.eval.index, ("flat", "blocked", "pruned", "ivf", "hnsw"))
    for name in cfg.teachers.names:
        choice("teachers.names", name, TEACHER_NAMES)
    if len(set(cfg.teachers.names)) != len(cfg.teachers.names) or not cfg.teachers.names:
        raise InputError(f"{where}.teachers.names", "must list distinct teacher names, at least one")
    choice("teachers.ae_variant", cfg.teachers.ae_variant, ("vae", "cdae"))
    for name in TEACHER_NAMES:
        t = getattr(cfg.teachers, name)
        eval_every = t.eval_every or cfg.teachers.eval_every
        snapshot_every = t.snapshot_every or cfg.teachers.snapshot_every
        for key in ("lr", "batch_size", "eval_every", "snapshot_every", "max_epochs"):
            if getattr(t, key) < 0:
                raise InputError(f"{where}.teachers.{name}.{key}", "must be >= 0 (0 = the shared value)")
        if (t.max_epochs or cfg.teachers.max_epochs) < eval_every:
            raise InputError(
                f"{where}.teachers.{name}.max_epochs",
                f"below eval_every={eval_every}",
                "a teacher needs at least one evaluation",
            )
        if eval_every % snapshot_every:
            raise InputError(
                f"{where}.teachers.{name}.snapshot_every",
                f"{snapshot_every} does not divide eval_every={eval_every}",
                "every evaluated epoch must have a snapshot (E4 is the best evaluation)",
            )
    if (cfg.teachers.iknn.max_epochs or cfg.teachers.max_epochs) != 1:
        raise InputError(
            f"{where}.teachers.iknn.max_epochs", "must be 1", "item-kNN is computed in one pass (one state)"
        )
    positive("teachers.iknn_k", cfg.teachers.iknn_k)
    positive("teachers.als_alpha", cfg.teachers.als_alpha)
    if cfg.teachers.als_reg < 0:
        raise InputError(f"{where}.teachers.als_reg", f"must be >= 0, got {cfg.teachers.als_reg}")
    choice("knowledge.d_variant", cfg.knowledge.d_variant, ("code", "paper"))
    choice("knowledge.move_rule", cfg.knowledge.move_rule, ("code", "paper"))
    if cfg.knowledge.weights and len(cfg.knowledge.weights) != len(cfg.teachers.names):
        raise InputError(
            f"{where}.knowledge.weights", f"needs one weight per teacher ({len(cfg.teachers.names)})"
        )
    choice("student.model", cfg.student.model, ("mf", "ml", "dnn"))
    choice("student.method", cfg.student.method, STUDENT_METHODS)
    choice("student.tail", cfg.student.tail, ("exact", "sampled"))
    student_lr(cfg.student, f"{where}.student.method_lr")  # parses and checks every entry
    b = cfg.baselines
    for i, st in enumerate(b.cldrd_stages):
        if len(st) != 3 or st[0] < 1 or min(st) < 0 or st[0] + st[1] > b.topk:
            raise InputError(
                f"{where}.baselines.cldrd_stages[{i}]",
                f"{list(st)} is not (fine >= 1, coarse, negatives) "
                f"with fine + coarse <= baselines.topk={b.topk}",
            )
    if not b.cldrd_stages:
        raise InputError(f"{where}.baselines.cldrd_stages", "needs at least one stage")
    for name in ("topk", "rd_top", "rd_lambda", "rd_samples", "dcd_eps", "cldrd_patience", "rank_block"):
        positive(f"baselines.{name}", getattr(b, name))
    for s in cfg.pipeline.students:
        choice("pipeline.students", s, ("mf", "ml", "dnn"))
    for m in cfg.pipeline.methods:
        choice("pipeline.methods", m, STUDENT_METHODS)
    for name in ("dim", "batch_size", "max_epochs", "eval_every", "patience"):
        positive(f"student.{name}", getattr(cfg.student, name))
        positive(f"teachers.{name}", getattr(cfg.teachers, name))
    st = cfg.student
    if (
        st.lambda_prune_epoch < 0
        or st.lambda_prune_epoch % st.eval_every
        or (st.lambda_prune_epoch and st.lambda_prune_epoch >= st.max_epochs)
    ):
        raise InputError(
            f"{where}.student.lambda_prune_epoch",
            f"{st.lambda_prune_epoch} is not 0 or a multiple of eval_every={st.eval_every} below "
            f"max_epochs={st.max_epochs}",
            "the candidates are compared at an evaluation",
        )
    r = cfg.report
    if not r.als_alphas or not r.als_regs:
        raise InputError(f"{where}.report.als_alphas", "the ALS grid needs at least one alpha and one reg")
    for name in ("als_iterations", "als_eval_every", "als_patience"):
        positive(f"report.{name}", getattr(r, name))
    for i, d in enumerate(r.als_dims):
        positive(f"report.als_dims[{i}]", d)
    for i, a in enumerate(r.als_alphas):
        positive(f"report.als_alphas[{i}]", a)
    if min(r.als_regs) < 0:
        raise InputError(f"{where}.report.als_regs", f"every reg must be >= 0, got {list(r.als_regs)}")
    if cfg.knowledge.topk < cfg.knowledge.d_k:
        raise InputError(f"{where}.knowledge.topk", "must be >= knowledge.d_k")
    return cfg
