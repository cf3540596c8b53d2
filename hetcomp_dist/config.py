"""One typed, frozen configuration, loaded from YAML, with type-checked ``key=value`` overrides.

Every hyperparameter of METHOD.md lives here with the paper's value as its default. Unknown keys,
wrong types and values outside a field's range (`ranged`; NaN and ±inf never pass) fail with the dotted
field name and the accepted keys, type or range, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from hetcomp_dist.errors import InputError

PAPER_TEACHERS = ("mf", "ml", "dnn", "gnn", "ae", "iae")  # the paper's six: the default teachers
TEACHER_NAMES = (*PAPER_TEACHERS, "als", "iknn", "rp3")  # every teacher family the package trains
# any other name in teachers.names is a teacher imported into the run (`hetcomp-dist teachers import`)
IMPORTED_TEACHER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
BASELINES = ("rd", "rrd", "mtd", "cldrd", "dcd")  # the paper's comparison methods (METHOD.md §4)
STUDENT_METHODS = ("hetcomp", "wokd", *BASELINES)
STUDENT_MODELS = ("mf", "ml", "dnn")
DATA_FORMATS = ("citeulike", "csv", "parquet", "synthetic")
EVAL_INDEXES = ("flat", "blocked", "pruned", "ivf", "hnsw")
APPROXIMATE_INDEXES = ("ivf", "hnsw")


# ------------------------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: finite, from `lo` to `hi`, each end closed unless open."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""  # what a special value means, shown in the error

    def __contains__(self, x: float) -> bool:
        return (
            math.isfinite(x)
            and (x > self.lo if self.lo_open else x >= self.lo)
            and (x < self.hi if self.hi_open else x <= self.hi)
        )

    def describe(self, floats: bool) -> str:
        """E.g. ">= 1", "a finite number in (0, 1]", "a finite number (< 0 = auto)"."""
        words = ["a finite number"] if floats else []
        lo, hi = _num(self.lo), _num(self.hi)
        if self.hi < math.inf:
            words.append(f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}")
        elif self.lo > -math.inf:
            words.append(f"{'>' if self.lo_open else '>='} {lo}")
        if self.note:
            words.append(f"({self.note})")
        return " ".join(words)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


ANY = Range()
POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)  # also every seed: numpy's generators take none below 0
COUNT = Range(1)
FRACTION = Range(0, 1, lo_open=True, hi_open=True)
IDS = Range(1, 2**31 - 1)  # user and item ids are int32
SHARED = Range(0, note="0 = the shared value in teachers")
MAX_D_K = 65_534  # knowledge/discrepancy.py: D@K positions + 1 fit its uint16 position map


def ranged(default: Any, valid: Range) -> Any:
    """A config field whose value (each element of a tuple) `validate` keeps inside `valid`."""
    return field(default=default, metadata={"range": valid})


# ------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class DataConfig:
    """Ingestion (METHOD.md §1)."""

    input: str = ""  # path or URI of the interactions; "" = the built-in synthetic preset
    format: str = "synthetic"  # citeulike | csv | parquet | synthetic
    user_col: str = "user"
    item_col: str = "item"
    rating_col: str = ""  # "" = every row is a positive interaction
    rating_threshold: float = ranged(0.0, ANY)  # keep rows with rating >= threshold
    csv_delimiter: str = ","
    min_user_interactions: int = ranged(5, COUNT)
    test_frac: float = ranged(0.2, FRACTION)  # test_frac + valid_frac < 1
    valid_frac: float = ranged(0.2, FRACTION)
    seed: int = ranged(0, NON_NEGATIVE)
    shard_size: int = ranged(50_000, COUNT)  # users per shard, fixed per run


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic generator; the defaults are the small built-in demo dataset."""

    users: int = ranged(3000, IDS)
    items: int = ranged(2000, IDS)  # >= 4 * min_interactions
    seed: int = ranged(0, NON_NEGATIVE)
    mean_interactions: float = ranged(20.0, POSITIVE)
    min_interactions: int = ranged(5, COUNT)  # user activity: truncated discrete Pareto from here ...
    max_interactions: int = ranged(1000, COUNT)  # ... to min(this, items // 4)
    pop_exponent: float = ranged(1.0, NON_NEGATIVE)  # Zipf exponent of item popularity
    # popularity exponent inside topics and neighbourhoods (0 = none)
    structure_pop_bias: float = ranged(0.25, NON_NEGATIVE)
    topics: int = ranged(16, COUNT)  # rank of the low-rank (topic) part
    # Dirichlet alpha of user and item topic mixtures (small = sparse)
    topic_concentration: float = ranged(0.1, POSITIVE)
    # Zipf exponent of the within-topic item order (a head of core items)
    topic_exponent: float = ranged(0.5, NON_NEGATIVE)
    community_size: int = ranged(50, COUNT)  # items per neighbourhood (the cluster part)
    # mean share of popularity / topic / neighbourhood draws (3 weights: 10x them are Dirichlet alphas)
    mixture: tuple[float, ...] = ranged((0.1, 0.4, 0.5), POSITIVE)


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = ranged((10, 50), COUNT)  # must include 10 and 50 (the report's columns)
    batch_size: int = ranged(4096, COUNT)  # users per retrieval batch
    index: str = (
        "flat"  # flat (exact FAISS) | blocked (exact FAISS, norm-pruned) | pruned (exact torch) | ivf | hnsw
    )
    ivf_nlist: int = ranged(1024, COUNT)
    ivf_nprobe: int = ranged(32, COUNT)
    hnsw_m: int = ranged(32, Range(2))  # FAISS's HNSW crashes with M = 1
    hnsw_ef_search: int = ranged(256, COUNT)
    # below this, evaluate in-process (Ray's fixed costs are seconds)
    distributed_min_users: int = ranged(200_000, NON_NEGATIVE)
    # concurrent evaluation tasks and recommend actors (0 = the cluster's CPU capacity, its autoscaler's
    # maximum where it reports one: hetcomp_dist.resources)
    max_tasks: int = ranged(0, NON_NEGATIVE)


@dataclass(frozen=True)
class TeacherTraining:
    """Per-teacher training overrides; 0 (l2: < 0) means "use the shared value in TeachersConfig".

    `batch_size` counts what the model's batches hold: train interactions (mf, ml, dnn, gnn), users
    (ae, als: users per block of its objective) or items (iae); lr and l2 mean nothing to als, iknn and
    rp3, which fit themselves (one ALS iteration is one epoch; item-kNN and RP3beta are computed in their one
    epoch).
    """

    lr: float = ranged(0.0, SHARED)
    batch_size: int = ranged(0, SHARED)
    l2: float = ranged(-1.0, Range(note="< 0 = the shared value in teachers"))
    eval_every: int = ranged(0, SHARED)
    snapshot_every: int = ranged(0, SHARED)
    max_epochs: int = ranged(0, SHARED)
    dim: int = ranged(0, SHARED)  # the model's dimension (e.g. more ALS factors than the others)


@dataclass(frozen=True)
class TeachersConfig:
    """Teachers (METHOD.md §2); one Ray actor each."""

    names: tuple[str, ...] = PAPER_TEACHERS  # any of TEACHER_NAMES, or an imported teacher
    dim: int = ranged(64, COUNT)
    topk: int = ranged(100, COUNT)  # K of the exported trajectory
    lr: float = ranged(1e-3, POSITIVE)
    l2: float = ranged(1e-6, NON_NEGATIVE)
    batch_size: int = ranged(1024, COUNT)
    max_epochs: int = ranged(1000, COUNT)
    eval_every: int = ranged(10, COUNT)
    patience: int = ranged(5, COUNT)  # evaluations without valid R@50 improvement
    # epochs between trajectory snapshots (must divide every eval_every)
    snapshot_every: int = ranged(10, COUNT)
    num_cpus: float = ranged(0.3, POSITIVE)  # per actor
    # per actor; < 0 = auto: a share of the GPUs the cluster may hold (its autoscaler's maximum where it
    # reports one, else those present: hetcomp_dist.resources), 0 when it has none
    num_gpus: float = ranged(-1.0, Range(note="< 0 = auto"))
    max_restarts: int = ranged(3, NON_NEGATIVE)  # bounded: Ray's -1 would restart a crashing actor forever
    seed: int = ranged(0, NON_NEGATIVE)
    # embedding tables (mf, ml, dnn; gnn's layer-0 rows with gnn_refresh_every > 0; Mult-VAE's input
    # layer; the autoencoders' sampled decoder rows with ae_/iae_decoder_samples) take sparse, lazy
    # row-wise Adam updates: a step costs O(batch) rows, not O(table) (models/rowwise.py)
    sparse_updates: bool = False
    export_batch_size: int = ranged(1024, COUNT)  # users per scoring block in the trajectory export
    # retrieval of the teachers stage (the trajectory export and the teachers' evaluations): "" = eval.index;
    # ivf | hnsw = approximate (eval.ivf_* / hnsw_* settings; a model without embeddings ranks its top
    # export_candidates from `candidate_embeddings` by its exact `pair_scores`), its recall@topk against
    # exact measured on export_recall_users users per state (metrics.json)
    export_index: str = ""
    export_candidates: int = ranged(500, COUNT)
    export_recall_users: int = ranged(1000, NON_NEGATIVE)
    # > 0: before each state's export, the approximate index searches wider (IVF nprobe, HNSW efSearch,
    # doubled) until its recall@topk against exact, less a margin for sampling error, reaches this on
    # export_recall_users other users (teachers/trajectory.py: calibrate_breadth); 0 = the
    # eval.ivf_nprobe / hnsw_ef_search as set
    export_recall_target: float = ranged(0.0, Range(0, 1))
    # > 0, with export_recall_target: an IVF search that would have to widen to this share of its lists
    # or more exports that state exactly instead (a flat index: recall 1, and where IVF scans half its
    # lists no slower; docs/PERFORMANCE.md); 0 = always the IVF as calibrated
    export_exact_share: float = ranged(0.25, Range(0, 1))
    keep_snapshots: bool = False  # False: after the export keep only the four state snapshots
    progress_every_s: float = ranged(10.0, POSITIVE)  # driver's progress table period
    # model-specific
    cml_margin: float = ranged(1.0, NON_NEGATIVE)
    cml_negatives: int = ranged(1, COUNT)  # sampled negatives per triple; the hinge uses the closest one
    dnn_negatives: int = ranged(4, COUNT)
    dnn_layers: int = ranged(3, COUNT)
    # per-side id embedding of the MLP tower (input 2x this, halving per layer)
    dnn_mlp_dim: int = ranged(32, COUNT)
    gnn_layers: int = ranged(3, COUNT)
    # LightGCN: 0 = exact (the whole graph propagated for every batch); k > 0 = the propagated
    # neighbourhood part cached, refreshed every k steps and each epoch (models/lightgcn.py)
    gnn_refresh_every: int = ranged(0, Range(0, note="0 = propagate for every batch"))
    # LightGCN's cache: random walks per batch node that carry the gradient into the neighbourhood
    gnn_walks: int = ranged(4, Range(0, note="0 = the batch's own layer-0 rows only"))
    ae_hidden: int = ranged(600, COUNT)
    # 0 = linear decoder latent -> items; > 0 = latent -> hidden -> items
    ae_decoder_hidden: int = ranged(0, NON_NEGATIVE)
    ae_dropout: float = ranged(0.5, Range(0, 1, hi_open=True))
    ae_beta: float = ranged(0.2, NON_NEGATIVE)
    ae_anneal_steps: int = ranged(20_000, NON_NEGATIVE)
    ae_variant: str = "vae"  # vae | cdae
    # Mult-VAE: the multinomial's normaliser over every item (0, the paper's) or estimated from this many
    # items drawn uniformly per batch (sampled softmax: a (batch, samples) logits block)
    ae_decoder_samples: int = ranged(0, Range(0, note="0 = the full softmax over every item"))
    # I-AE input: an item's users hashed into this many signed buckets; 0 = the exact n_users-wide input
    iae_hash_buckets: int = ranged(0, Range(0, note="0 = the exact n_users-wide input"))
    # I-AE: its normaliser over every user (0) or from this many sampled users (as ae_decoder_samples)
    iae_decoder_samples: int = ranged(0, Range(0, note="0 = the full softmax over every user"))
    # I-AE: most (items x users) logits of one batch; the item batch is capped to fit (e.g. 64 at 1M users)
    iae_max_logits: int = ranged(2**26, COUNT)
    # I-AE: its exact softmax normaliser computed over blocks of this many users, each block's logits
    # recomputed going backward, so no (items x users) array is ever held (models/vae.py:
    # _BlockedLinearLSE); 0 = one (items x users) block, as the paper computes it
    iae_softmax_block: int = ranged(0, Range(0, note="0 = one block over every user"))
    # I-AE ranking: "logit", the decoder's output for column u before the softmax (W_u . f_i: items carry
    # an offset the softmax over users never fixes); "log_softmax", log p(u | i) = the logit less item i's
    # normaliser over every user (models/iae.py)
    iae_score: str = "logit"
    als_alpha: float = ranged(
        100.0, POSITIVE
    )  # ALS confidence c = 1 + alpha * x for a train interaction (Hu et al. 2008)
    als_reg: float = ranged(
        30.0, NON_NEGATIVE
    )  # ALS L2 weight lambda on every factor row (implicit's `regularization`)
    iknn_k: int = ranged(100, COUNT)  # item-kNN: neighbours kept per item (cosine over the train lists)
    # item-kNN: the cosine's shrink term, |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink); 0 = the plain cosine
    iknn_shrink: float = ranged(50.0, NON_NEGATIVE)
    # RP3beta (models/iknn.py): neighbours kept per item, the walk's transition exponent and popularity
    # penalty; the defaults were picked on CiteULike's valid R@50 (docs/RESULTS.md)
    rp3_k: int = ranged(500, COUNT)
    rp3_alpha: float = ranged(0.5, POSITIVE)
    rp3_beta: float = ranged(0.1, NON_NEGATIVE)
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
    # RP3beta: the same, one state computed in one epoch
    rp3: TeacherTraining = field(
        default_factory=lambda: TeacherTraining(max_epochs=1, eval_every=1, snapshot_every=1)
    )


@dataclass(frozen=True)
class KnowledgeConfig:
    """Ensemble g, P+, D@K and DKC (METHOD.md §3)."""

    topk: int = ranged(100, COUNT)  # K of the targets T_u (= teachers.topk)
    temperature: float = ranged(10.0, POSITIVE)  # T of the rank importance exp(-r/T)
    weights: tuple[float, ...] = ranged((), NON_NEGATIVE)  # per-teacher w_x; () = all 1
    pos_k: int = ranged(10, COUNT)  # |P+| = K // 10
    d_k: int = ranged(50, Range(1, MAX_D_K))  # K of the discrepancy D@K (<= topk)
    d_variant: str = "code"  # code | paper
    d_lambda: float = ranged(10.0, POSITIVE)  # lambda of the paper variant's relevance exp(-r/lambda)
    move_rule: str = "code"  # code (decayed threshold, or rho < 1) | paper (rho > alpha)
    alpha: float = ranged(1.05, POSITIVE)
    decay: float = ranged(0.995, Range(0, 1, lo_open=True))
    period: int = ranged(10, COUNT)  # p: DKC every p epochs, from epoch p on
    distributed_min_users: int = ranged(200_000, NON_NEGATIVE)  # below this, rounds run in-process
    batch_users: int = ranged(2048, COUNT)  # users per vectorised batch inside a shard task
    task_cpus: float = ranged(1.0, POSITIVE)  # Ray CPUs per shard task
    # concurrent shard tasks (0 = as many as the cluster's CPUs allow)
    max_tasks: int = ranged(0, NON_NEGATIVE)
    # round 0 copies the teachers' states to RUN/knowledge/states (lz4 Arrow IPC), which every DKC round
    # reads instead of decoding Parquet (on disk about the teachers' Parquet size again, twice it past
    # 65,535 items); takes effect when round 0 is built
    cache_states: bool = True


@dataclass(frozen=True)
class StudentConfig:
    """Student training (METHOD.md §3)."""

    model: str = "mf"  # mf | ml | dnn
    method: str = "hetcomp"  # hetcomp | wokd | rd | rrd | mtd | cldrd | dcd
    dim: int = ranged(6, COUNT)
    lr: float = ranged(1e-3, POSITIVE)
    method_lr: tuple[
        str, ...
    ] = ()  # per-method learning rates "method=lr" (e.g. "wokd=0.001"); others use lr
    weight_decay: float = ranged(1e-5, NON_NEGATIVE)
    batch_size: int = ranged(1024, COUNT)  # train interactions per batch (its unique users are used)
    max_epochs: int = ranged(1000, COUNT)
    eval_every: int = ranged(10, COUNT)
    patience: int = ranged(5, COUNT)
    # when `patience` evaluations pass without a better valid R@50 in the objective's last phase (HetComp:
    # after the switch to L_F), multiply the learning rate by lr_drop_factor and go on, at most lr_drops
    # times, before stopping; 0 = stop at once (the paper)
    lr_drops: int = ranged(0, NON_NEGATIVE)
    lr_drop_factor: float = ranged(0.1, FRACTION)
    logit_clamp: float = ranged(40.0, POSITIVE)
    lo_scale: float = ranged(0.01, POSITIVE)
    lf_scale: float = ranged(0.005, POSITIVE)
    # HetComp: L_O distils only the first lo_topk items of T_u (the rest of T_u joins the tail, as with a
    # knowledge K of lo_topk); L_F always reads the whole T_u; 0 = knowledge.topk (the paper)
    lo_topk: int = ranged(0, NON_NEGATIVE)
    tail: str = "exact"  # exact | sampled
    tail_samples: int = ranged(4096, COUNT)  # sampled tail: uniform sample of N_u, scaled
    lambda_kd: float = ranged(-1.0, Range(note="< 0 = pick from lambda_grid"))  # baselines' λ_KD
    lambda_grid: tuple[float, ...] = ranged((1e-3, 1e-2, 1e-1, 1.0), NON_NEGATIVE)
    # λ grid pruning: every candidate trains this many epochs (a multiple of eval_every), then only the one
    # with the best validation R@50 so far trains on to early stopping; 0 = every candidate trains to the end
    lambda_prune_epoch: int = ranged(0, NON_NEGATIVE)
    num_workers: int = ranged(2, NON_NEGATIVE)  # Ray Train workers (0 = in the driver, no DDP)
    cpus_per_worker: float = ranged(0.5, POSITIVE)
    use_gpu: bool = False
    seed: int = ranged(0, NON_NEGATIVE)
    # the user table takes sparse, lazy row-wise Adam updates (weight decay on the batch's rows only):
    # a step costs O(batch) user rows, not O(n_users) (models/rowwise.py); item tables stay dense
    sparse_updates: bool = True
    # students (METHOD.md §2) and the trainer's mechanics
    ml_margin: float = ranged(1.0, NON_NEGATIVE)  # ML student's hinge margin m (w/o KD)
    # ML student's rows renormalised into this ball after each step, where the objective trains CML's
    # hinge (w/o KD, baselines; not HetComp: objectives.model_config); 0 = off
    ml_max_norm: float = ranged(1.0, NON_NEGATIVE)
    # DNN student's tower hidden widths (dim -> hidden... -> dim)
    dnn_hidden: tuple[int, ...] = ranged((12,), COUNT)
    dnn_residual: bool = (
        True  # DNN student: towers add their input back (a_u = e_u + f(e_u)); False = plain towers
    )
    # items per block of the exact tail sums; 0 = auto (CPU: L2-sized, GPU: all)
    tail_chunk: int = ranged(0, NON_NEGATIVE)
    # the exact tail's kernel: fused (numba, one pass per item; float32 on CPU), torch (blocks of tail_chunk
    # items; any device), auto = fused where it applies (objectives/losses.py)
    tail_kernel: str = "auto"
    # torch threads per Train worker; 0 = max(1, floor(cpus_per_worker))
    threads_per_worker: int = ranged(0, NON_NEGATIVE)
    # Ray Train FailureConfig: worker-group restarts from the last checkpoint (bounded: Ray's -1 would
    # restart a worker group that fails the same way forever)
    max_failures: int = ranged(3, NON_NEGATIVE)


@dataclass(frozen=True)
class BaselinesConfig:
    """The comparison methods' own settings (METHOD.md §4); their λ_KD is student.lambda_kd."""

    # K of the distilled teacher lists (E4 ensemble top-K; MTD: each teacher's top-K); <= teachers.topk
    topk: int = ranged(100, COUNT)
    rd_top: int = ranged(10, COUNT)  # RD: the teacher's top items used as positives (<= topk)
    rd_lambda: float = ranged(1.0, POSITIVE)  # RD: static position weight exp(-r / rd_lambda)
    # RD: dynamic weight tanh(max(mu (r_hat - r), 0)); mu = 0 would zero it and RD's loss after rd_warmup
    rd_mu: float = ranged(0.1, POSITIVE)
    rd_warmup: int = ranged(10, NON_NEGATIVE)  # RD: the dynamic weight applies after this many epochs
    rd_samples: int = ranged(100, COUNT)  # RD: random items for the student's rank estimate r_hat
    # MTD: weight of the entropy bonus on the per-user teacher weights
    mtd_entropy: float = ranged(0.01, NON_NEGATIVE)
    cldrd_stages: tuple[tuple[int, ...], ...] = (
        (5, 12, 13),
        (10, 10, 10),
        (20, 5, 5),
    )  # (fine, coarse, negatives): checked in `validate`
    # CL-DRD: evaluations without a new best valid R@50 before the next stage
    cldrd_patience: int = ranged(1, COUNT)
    dcd_eps: float = ranged(10.0, POSITIVE)  # DCD: weight tanh(|rank gap| / eps)
    rank_block: int = ranged(512, COUNT)  # DCD: users per scoring block when refreshing the student's ranks


@dataclass(frozen=True)
class PipelineConfig:
    """What `hetcomp-dist run` trains after the teachers and the knowledge."""

    students: tuple[str, ...] = ("mf", "ml", "dnn")
    methods: tuple[str, ...] = ("hetcomp", "wokd")
    cost_users: int = ranged(0, NON_NEGATIVE)  # users timed for the inference-cost table; 0 = every test user
    # one writer per RUN (hetcomp_dist.lease): the holder rewrites RUN/_lease.json every heartbeat; a
    # lease whose heartbeat is older than the timeout belongs to a process that is gone
    lease_heartbeat_s: float = ranged(10.0, POSITIVE)
    lease_timeout_s: float = ranged(120.0, POSITIVE)
    # teacher actors and the student's Train workers keep freed heap memory for their next steps instead
    # of unmapping and page-faulting large blocks in again (hetcomp_dist/allocator.py): faster steps for a
    # process's peak heap held; off = glibc's defaults
    keep_freed_memory: bool = True


@dataclass(frozen=True)
class ReportConfig:
    """The report's small-model baseline: implicit's ALS at the student's and at the teachers' dimension,
    each dimension's setting picked on valid R@50 by a small grid (report/als_baseline.py)."""

    als_baseline: bool = True  # computed by the report stage of `hetcomp-dist run`
    als_dims: tuple[int, ...] = ranged((), COUNT)  # () = (student.dim, teachers.dim)
    als_alphas: tuple[float, ...] = ranged(
        (10.0, 40.0, 100.0), POSITIVE
    )  # confidence 1 + alpha (teachers.als_alpha)
    als_regs: tuple[float, ...] = ranged((0.1, 3.0, 30.0), NON_NEGATIVE)  # L2 weight (teachers.als_reg)
    als_iterations: int = ranged(15, COUNT)  # most ALS iterations of one grid point
    als_eval_every: int = ranged(
        5, COUNT
    )  # iterations between its valid evaluations (the last one is always evaluated)
    als_patience: int = ranged(1, COUNT)  # evaluations without a better valid R@50 before a grid point stops


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


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading exponent floats without a dot (``1e-3``, ``2E5``) as numbers, as
    YAML 1.2 and Python do: PyYAML follows YAML 1.1, where they are strings, so ``student.lr=1e-3`` was
    refused as "expected a number"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str | bytes) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: plain data, no Python objects


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies ``section.key=value`` strings (value parsed as YAML) onto a nested dict."""
    raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for ov in overrides:
        if "=" not in ov:
            raise InputError(f"override {ov!r}", "expected key=value", "e.g. student.model=ml")
        key, _, text = ov.partition("=")
        try:
            value = _load_yaml(text) if text else ""
        except yaml.YAMLError as e:
            raise InputError(f"override {key}", f"{text!r} is not a YAML value ({e.problem})") from e
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
            raw = _load_yaml(storage.read_bytes(path)) or {}
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
    or gives a learning rate that is not a finite number > 0.
    """
    lrs: dict[str, float] = {}
    for i, entry in enumerate(s.method_lr):
        method, eq, text = entry.partition("=")
        method = method.strip()
        try:
            lr = float(text) if eq else float("nan")
        except ValueError:
            lr = float("nan")
        if method not in STUDENT_METHODS or not 0 < lr < math.inf or method in lrs:
            raise InputError(
                f"{where}[{i}]",
                f"{entry!r} is not a unique 'method=lr' with a finite lr > 0 and method "
                f"one of {', '.join(STUDENT_METHODS)}",
                "e.g. student.method_lr=[wokd=0.001]",
            )
        lrs[method] = lr
    return lrs.get(s.method, s.lr)


def _check_ranges(section: Any, where: str) -> None:
    """InputError for the first value of `section` (walked into its subsections) outside its field's
    `ranged` range; a tuple's elements are named by index."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{where}.{f.name}")
        if "range" not in f.metadata:
            continue
        valid, floats = f.metadata["range"], float in (hints[f.name], *typing.get_args(hints[f.name]))
        for index, v in enumerate(value) if isinstance(value, tuple) else [(None, value)]:
            if v not in valid:
                name = f"{where}.{f.name}" + ("" if index is None else f"[{index}]")
                raise InputError(name, f"must be {valid.describe(floats)}, got {v!r}")


def validate(cfg: Config, where: str = "config") -> Config:
    """Checks every numeric field against its `ranged` range, then the choices and the fields that
    bound one another."""

    def choice(name: str, value: str, options: tuple[str, ...]) -> None:
        if value not in options:
            raise InputError(f"{where}.{name}", f"{value!r} is not one of {', '.join(options)}")

    _check_ranges(cfg, where)
    d = cfg.data
    choice("data.format", d.format, ("citeulike", "csv", "parquet", "synthetic"))
    if d.test_frac + d.valid_frac >= 1:
        raise InputError(
            f"{where}.data.test_frac",
            f"test_frac + valid_frac = {d.test_frac + d.valid_frac:g} must be < 1",
            "leave some of every user's items for training",
        )
    if len(d.csv_delimiter) != 1:
        raise InputError(f"{where}.data.csv_delimiter", f"{d.csv_delimiter!r} is not one character")
    for name in ("user_col", "item_col"):
        if not getattr(d, name):
            raise InputError(f"{where}.data.{name}", "must name a column")
    sy = cfg.synth
    if len(sy.mixture) != 3:
        raise InputError(f"{where}.synth.mixture", "needs 3 weights (popularity, topics, communities)")
    if sy.items < 4 * sy.min_interactions:
        raise InputError(
            f"{where}.synth.items",
            f"needs >= {4 * sy.min_interactions} items for users of {sy.min_interactions} interactions",
            "raise synth.items or lower synth.min_interactions",
        )
    choice("eval.index", cfg.eval.index, ("flat", "blocked", "pruned", "ivf", "hnsw"))
    if len(set(cfg.eval.ks)) != len(cfg.eval.ks):
        raise InputError(f"{where}.eval.ks", f"{list(cfg.eval.ks)} repeats a value")
    if not {10, 50} <= set(cfg.eval.ks):
        raise InputError(
            f"{where}.eval.ks",
            f"{list(cfg.eval.ks)} must include 10 and 50",
            "the report shows R@10, N@10, R@50, N@50 and valid R@50 picks every best epoch",
        )
    t = cfg.teachers
    for name in t.names:
        if name not in TEACHER_NAMES and not IMPORTED_TEACHER_NAME.fullmatch(name):
            raise InputError(
                f"{where}.teachers.names",
                f"{name!r} is neither a built-in teacher ({', '.join(TEACHER_NAMES)}) nor an imported "
                f"teacher's name ({IMPORTED_TEACHER_NAME.pattern})",
            )
    if len(set(t.names)) != len(t.names) or not t.names:
        raise InputError(f"{where}.teachers.names", "must list distinct teacher names, at least one")
    if len(t.names) * t.topk < max(cfg.eval.ks):
        raise InputError(
            f"{where}.teachers.topk",
            f"{len(t.names)} teachers x {t.topk} exported items cannot fill the ensemble's "
            f"top-{max(cfg.eval.ks)} list (eval.ks)",
            "raise teachers.topk",
        )
    choice("teachers.ae_variant", t.ae_variant, ("vae", "cdae"))
    choice("teachers.iae_score", t.iae_score, ("logit", "log_softmax"))
    choice("teachers.export_index", t.export_index, ("", *EVAL_INDEXES))
    if t.export_recall_target > 0 and t.export_recall_users == 0:
        raise InputError(
            f"{where}.teachers.export_recall_target",
            f"{t.export_recall_target} needs users to measure recall on (teachers.export_recall_users is 0)",
            "set teachers.export_recall_users > 0, or export_recall_target=0",
        )
    if t.export_index in APPROXIMATE_INDEXES and t.export_candidates < t.topk:
        raise InputError(
            f"{where}.teachers.export_candidates",
            f"{t.export_candidates} must be >= teachers.topk={t.topk}",
            "the exact scores rank the candidates, so there must be at least K of them",
        )
    for name in TEACHER_NAMES:
        o = getattr(t, name)
        eval_every = o.eval_every or t.eval_every
        snapshot_every = o.snapshot_every or t.snapshot_every
        if (o.max_epochs or t.max_epochs) < eval_every:
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
    for name in ("iknn", "rp3"):
        if (getattr(t, name).max_epochs or t.max_epochs) != 1:
            raise InputError(
                f"{where}.teachers.{name}.max_epochs",
                "must be 1",
                f"{name} is computed in one pass (one state)",
            )
    k = cfg.knowledge
    choice("knowledge.d_variant", k.d_variant, ("code", "paper"))
    choice("knowledge.move_rule", k.move_rule, ("code", "paper"))
    if k.topk != t.topk:
        raise InputError(
            f"{where}.knowledge.topk",
            f"{k.topk} must equal teachers.topk={t.topk}",
            "the knowledge stage reads the teachers' exported top-K lists whole",
        )
    if k.d_k > k.topk:
        raise InputError(f"{where}.knowledge.d_k", f"{k.d_k} must be <= knowledge.topk={k.topk}")
    if k.weights and len(k.weights) != len(t.names):
        raise InputError(f"{where}.knowledge.weights", f"needs one weight per teacher ({len(t.names)})")
    if k.weights and not sum(k.weights) > 0:
        raise InputError(f"{where}.knowledge.weights", "must not be all 0")
    s = cfg.student
    choice("student.model", s.model, ("mf", "ml", "dnn"))
    choice("student.method", s.method, STUDENT_METHODS)
    choice("student.tail", s.tail, ("exact", "sampled"))
    choice("student.tail_kernel", s.tail_kernel, ("auto", "fused", "torch"))
    if s.tail_kernel == "fused" and (s.use_gpu or s.logit_clamp >= 87):
        raise InputError(
            f"{where}.student.tail_kernel",
            "fused runs on CPU with student.logit_clamp < 87 only",
            "use auto (fused where it applies) or torch",
        )
    if s.lo_topk > k.topk:
        raise InputError(
            f"{where}.student.lo_topk",
            f"{s.lo_topk} must be <= knowledge.topk={k.topk}",
            "L_O reads the first lo_topk items of the knowledge's top-K lists; 0 = all of them",
        )
    student_lr(s, f"{where}.student.method_lr")  # parses and checks every entry
    if s.lambda_kd < 0 and not s.lambda_grid:
        raise InputError(
            f"{where}.student.lambda_grid", "needs a value when student.lambda_kd < 0 (the search)"
        )
    if len(set(s.lambda_grid)) != len(s.lambda_grid):
        raise InputError(f"{where}.student.lambda_grid", f"{list(s.lambda_grid)} repeats a value")
    if s.lambda_prune_epoch % s.eval_every or (s.lambda_prune_epoch and s.lambda_prune_epoch >= s.max_epochs):
        raise InputError(
            f"{where}.student.lambda_prune_epoch",
            f"{s.lambda_prune_epoch} is not 0 or a multiple of eval_every={s.eval_every} below "
            f"max_epochs={s.max_epochs}",
            "the candidates are compared at an evaluation",
        )
    b = cfg.baselines
    if b.topk > t.topk:
        raise InputError(
            f"{where}.baselines.topk",
            f"{b.topk} must be <= teachers.topk={t.topk}",
            "the baselines distil the teachers' exported lists",
        )
    if b.rd_top > b.topk:
        raise InputError(f"{where}.baselines.rd_top", f"{b.rd_top} must be <= baselines.topk={b.topk}")
    if not b.cldrd_stages:
        raise InputError(f"{where}.baselines.cldrd_stages", "needs at least one stage")
    for i, st in enumerate(b.cldrd_stages):
        if len(st) != 3 or st[0] < 1 or min(st) < 0 or st[0] + st[1] > b.topk:
            raise InputError(
                f"{where}.baselines.cldrd_stages[{i}]",
                f"{list(st)} is not (fine >= 1, coarse, negatives) "
                f"with fine + coarse <= baselines.topk={b.topk}",
            )
    for m in cfg.pipeline.students:
        choice("pipeline.students", m, ("mf", "ml", "dnn"))
    for m in cfg.pipeline.methods:
        choice("pipeline.methods", m, STUDENT_METHODS)
    p = cfg.pipeline
    if not 3 * p.lease_heartbeat_s <= p.lease_timeout_s:
        raise InputError(
            f"{where}.pipeline.lease_timeout_s",
            f"must be >= 3 x lease_heartbeat_s = {3 * p.lease_heartbeat_s:g}, got {p.lease_timeout_s}",
            "a live holder would otherwise look gone between two heartbeats",
        )
    if not cfg.report.als_alphas or not cfg.report.als_regs:
        raise InputError(f"{where}.report.als_alphas", "the ALS grid needs at least one alpha and one reg")
    return cfg
