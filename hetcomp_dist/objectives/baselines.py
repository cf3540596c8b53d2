"""The baselines (METHOD.md §4) as objectives that wrap any student: RD, RRD, MTD, CL-DRD, DCD.

Each one is the student's own base loss plus λ_KD times a distillation loss over the teachers'
*rankings* (never scores):

    loss = Σ_interactions base / global_batch  +  λ_KD · Σ_{u in batch} L_KD(u) / global_batch

Both terms are normalised by the step's global number of interactions, so W ranks of one global
batch train exactly like one process (the trainer sums gradients over ranks). λ_KD is
`student.lambda_kd`; the grid search over `student.lambda_grid` lives in `hetcomp_dist.student.lambda_grid`.

The teacher signal is read once per rank for its own users (`attach`): the E4 ensemble top-K
(RD, RRD, CL-DRD, DCD) or each teacher's E4 top-K (MTD). Tails over N_u minus a list use the
student stage's exact, item-blocked `tail_logsumexp` (or its sampled estimator with
``student.tail = sampled``), so no (users x items) block is built for the loss. Only DCD scores the
catalogue, once per epoch, block by block, to refresh the student's ranks of the teacher's items.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np
import torch

from hetcomp_dist import storage
from hetcomp_dist.config import Config
from hetcomp_dist.errors import InputError
from hetcomp_dist.knowledge import signal
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.students import Student
from hetcomp_dist.objectives import baseline_losses, losses
from hetcomp_dist.objectives.base import Batch, Objective


def _buffer(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int32)).to(like.device)


class BaselineObjective(Objective):
    """Base loss + λ_KD · Σ_u L_KD(u); subclasses implement `kd_loss` (per-user, (B,)).

    Args:
        cfg: the run's config (student, teachers, knowledge and baselines sections are used).
    """

    needs_negatives = True  # the student's base loss (BPR / CML hinge) needs one negative per interaction
    per_teacher = False  # MTD: keep each teacher's list instead of their ensemble

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        s, b = cfg.student, cfg.baselines
        if s.lambda_kd < 0:
            raise InputError(
                "student.lambda_kd",
                f"{s.lambda_kd} < 0 asks for the grid search, which runs one training per value",
                "train through `train_student` (it runs the grid) or set student.lambda_kd to one value",
            )
        self.lambda_kd, self.clamp, self.topk = float(s.lambda_kd), s.logit_clamp, b.topk
        self.teachers = tuple(cfg.teachers.names)
        self.n_items, self.lo, self.epoch = 0, 0, 0
        self.register_buffer("targets", torch.zeros(0, 0, dtype=torch.int32), persistent=False)

    # ---- the teacher signal of this rank's users
    def attach(self, run: str, data: Any) -> None:
        """Loads the E4 lists of users [data.lo, data.hi) (called by the trainer once the task is on its
        device)."""
        signal.check_teachers(run, self.teachers)
        lists = signal.teacher_lists(run, self.teachers, data.lo, data.hi, self.topk)
        k = self.cfg.knowledge
        self.lo, self.n_items, self.data = data.lo, data.n_items, data
        if self.per_teacher:
            self.targets = _buffer(lists, self.targets)
        else:
            self.targets = _buffer(
                signal.ensemble_targets(lists, self.topk, k.temperature, k.weights or None), self.targets
            )

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @classmethod
    def hash_parts(cls, run: str, cfg: Config) -> list:
        """The baselines' settings, the ensemble's and each teacher's export identity (retrained teachers
        invalidate a finished baseline)."""
        k = cfg.knowledge
        exports = [
            (storage.read_manifest(RunLayout(run).teacher(n)) or {}).get("config_hash")
            for n in cfg.teachers.names
        ]
        return [cls.name, cfg.baselines, list(cfg.teachers.names), k.temperature, list(k.weights), exports]

    # ---- the loss
    def loss(self, model: Student, batch: Batch) -> torch.Tensor:
        if self.targets.numel() == 0:
            raise RuntimeError(f"{self.name}: loss before attach (no teacher lists loaded)")
        base = model.base_loss(batch.inter_users, batch.inter_items, batch.neg_items).sum()
        kd = self.kd_loss(model, batch).sum() if self.lambda_kd > 0 else base.new_zeros(())
        return (base + self.lambda_kd * kd) / batch.global_batch

    @abc.abstractmethod
    def kd_loss(self, model: Student, batch: Batch) -> torch.Tensor:
        """(B,) per-user distillation loss of the batch's unique users."""

    # ---- helpers shared by the list losses
    def tail(self, a: torch.Tensor, c: torch.Tensor, batch: Batch, lists: torch.Tensor) -> torch.Tensor:
        """(B,) log Σ_{j ∈ N_u minus lists} e^{ŝ_j}: exact over the catalogue, or sampled (student.tail)."""
        return self.tail_fn(batch)(a, c, *losses.list_pairs(batch.train_rows, batch.train_items, lists))

    def rrd(self, a: torch.Tensor, c: torch.Tensor, batch: Batch, top: torch.Tensor) -> torch.Tensor:
        """(B,) PL(top; N_u minus top) for lists `top` (B, L), -1 padded."""
        s = losses.list_logits(a, c, top, self.clamp)
        return losses.pl_loss(s, top >= 0, self.tail(a, c, batch, top))

    def log_fields(self) -> dict[str, Any]:
        return {"lambda_kd": self.lambda_kd}


class RRDObjective(BaselineObjective):
    """RRD (Kang et al., CIKM'20): PL(T_u; N_u minus T_u) over the whole E4 ensemble top-K (no sampling of
    top items, the paper's setting): the teacher's order on the list, the list above everything else."""

    name = "rrd"

    def kd_loss(self, model, batch):
        a, c = model.user_side(batch.users), model.item_side()
        return self.rrd(a, c, batch, self.targets[batch.rows].long())


class RDObjective(BaselineObjective):
    """RD (Tang & Wang, KDD'18): Σ_{r<R} w_r · -log σ(ŝ_{T_u[r]}) on the top R = 10 items.

    w_r ∝ exp(-r/λ) (λ = 1); after `rd_warmup` epochs also times tanh(max(μ (r̂ - r), 0)) with the
    student's rank r̂ of the item estimated from `rd_samples` uniformly drawn items; renormalised.
    """

    name = "rd"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        b = cfg.baselines
        self.top_r, self.mu, self.warmup, self.samples = b.rd_top, b.rd_mu, b.rd_warmup, b.rd_samples
        self.register_buffer(
            "static_w", baseline_losses.rd_static_weights(b.rd_top, b.rd_lambda), persistent=False
        )

    def kd_loss(self, model, batch):
        a, c = model.user_side(batch.users), model.item_side()
        top = self.targets[batch.rows, : self.top_r].long()
        s = losses.list_logits(a, c, top, self.clamp)
        dyn = None
        if self.epoch > self.warmup:
            ref = torch.randint(
                0, self.n_items, (len(top), self.samples), generator=batch.generator, device=top.device
            )
            with torch.no_grad():
                est = baseline_losses.estimate_ranks(
                    s, losses.list_logits(a, c, ref, self.clamp), self.n_items
                )
            dyn = baseline_losses.rd_dynamic_weights(est, self.mu)
        return baseline_losses.rd_loss(s, top >= 0, self.static_w[: top.shape[1]], dyn)

    def log_fields(self):
        return {**super().log_fields(), "rd_dynamic": self.epoch > self.warmup}


class MTDObjective(BaselineObjective):
    """MTD: Σ_x w_ux · PL(π^x[:K]; N_u minus π^x) - c·H(w_u), w_u = softmax_x(<sg(e_u), t_x>).

    e_u is the student's user id embedding (p_u for MF/ML, the tower input for DNN), detached; the
    teacher vectors t_x (M, dim) are learnt with the student (and all-reduced like the item side).
    """

    name = "mtd"
    per_teacher = True

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        g = torch.Generator().manual_seed(cfg.student.seed)
        self.teacher_emb = torch.nn.Parameter(
            0.1 * torch.randn(len(self.teachers), cfg.student.dim, generator=g)
        )
        self.entropy = cfg.baselines.mtd_entropy
        self._w_sum, self._w_n = None, 0

    def kd_loss(self, model, batch):
        a, c = model.user_side(batch.users), model.item_side()
        lists = self.targets[batch.rows].long()  # (B, M, K)
        # One exact catalogue pass for the tail outside the union U of the M lists; each teacher's
        # tail N_u minus π^x = (N_u minus U) ∪ (U minus π^x) then adds only positive terms (no
        # cancellation), so M teachers cost one tail instead of M. U minus π^x comes for all teachers
        # at once from sums per teacher set (one exp per union item), and one PL runs over (B*M, K).
        B, M, K = lists.shape
        union, patterns = baseline_losses.union_patterns(lists)
        tail_u = self.tail(a, c, batch, union)
        s_u = losses.list_logits(a, c, union, self.clamp)
        tail_x = torch.logaddexp(tail_u[:, None], baseline_losses.rest_logsumexp(s_u, patterns, M)).reshape(
            B * M
        )
        s_x = losses.list_logits(a, c, lists.reshape(B, M * K), self.clamp).reshape(B * M, K)
        pl = losses.pl_loss(s_x, lists.reshape(B * M, K) >= 0, tail_x).reshape(B, M)
        loss, w = baseline_losses.mtd_loss(pl, model.user_emb(batch.users), self.teacher_emb, self.entropy)
        ws = w.detach().sum(0)
        self._w_sum = ws if self._w_sum is None else self._w_sum + ws
        self._w_n += len(w)
        return loss

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        self._w_sum, self._w_n = None, 0

    def log_fields(self):
        out = super().log_fields()
        if self._w_n:
            mean = (self._w_sum / self._w_n).tolist()
            out["mtd_weights"] = {t: round(v, 4) for t, v in zip(self.teachers, mean)}
        return out


class CLDRDObjective(BaselineObjective):
    """CL-DRD (Zeng et al., SIGIR'22): a curriculum over groups of the teacher list, LambdaMRR-style.

    Stage (n1, n2, n3): the fine group T_u[:n1] (labels 1/(r+1): its order matters), a coarse group
    of n2 items drawn uniformly each step from T_u[n1:] (one label, below the fine group), and n3
    negatives drawn uniformly from N_u minus T_u (label 0) -- the pair structure of CL-DRD's labels
    (1/r, then -0.25, then -0.5; only their order matters to the loss). Each step a user's list is
    fine + coarse + negatives, scored by `baseline_losses.lambda_mrr_loss`. The stages (5,12,13) → (10,10,10)
    → (20,5,5) advance when `cldrd_patience` evaluations in a row bring no new best validation R@50.
    """

    name = "cldrd"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        b = cfg.baselines
        self.stages = [tuple(int(v) for v in st) for st in b.cldrd_stages]
        self.patience = b.cldrd_patience
        self.stage, self.best, self.bad = 0, -1.0, 0

    def after_evaluation(self, epoch: int, metrics: dict) -> None:
        """Advances the curriculum on a validation plateau (identical on every rank: metrics are
        all-reduced)."""
        v = float(metrics["valid"]["R@50"])
        if v > self.best:
            self.best, self.bad = v, 0
            return
        self.bad += 1
        if self.bad >= self.patience and self.stage < len(self.stages) - 1:
            self.stage, self.bad = self.stage + 1, 0

    def kd_loss(self, model, batch):
        a, c = model.user_side(batch.users), model.item_side()
        n1, n2, n3 = self.stages[self.stage]
        t = self.targets[batch.rows].long()
        B, K = t.shape
        gen, dev = batch.generator, t.device
        # coarse: n2 random positions of T_u[n1:] (valid ones first, by random keys)
        keys = torch.rand(B, K - n1, generator=gen, device=dev).masked_fill(t[:, n1:] < 0, 2.0)
        coarse = torch.gather(t[:, n1:], 1, keys.argsort(1)[:, :n2])
        neg = self._negatives(batch, t, n3, B)
        lst = torch.cat([t[:, :n1], coarse, neg], 1)
        s = losses.list_logits(a, c, lst, self.clamp)
        labels = baseline_losses.cldrd_labels((n1, coarse.shape[1], n3)).to(s.dtype).to(dev)
        return baseline_losses.lambda_mrr_loss(s, labels, lst >= 0)

    def _negatives(self, batch: Batch, t: torch.Tensor, n: int, B: int) -> torch.Tensor:
        """(B, n) items drawn uniformly from N_u minus T_u (rejection; -1 where too few were found)."""
        N, dev = self.n_items, t.device
        draw = torch.randint(0, N, (B, 4 * n + 8), generator=batch.generator, device=dev)
        xr, xc = losses.exclude_lists(batch.train_rows, batch.train_items, t, N)
        key = torch.sort(xc * B + xr).values
        q = draw * B + torch.arange(B, device=dev)[:, None]
        pos = torch.searchsorted(key, q).clamp(max=max(len(key) - 1, 0))
        bad = (key[pos] == q) if len(key) else torch.zeros_like(q, dtype=torch.bool)
        # also drop repeats within a row: keep the first occurrence of each item
        srt, idx = torch.sort(draw, dim=1, stable=True)
        dup_sorted = torch.zeros_like(srt, dtype=torch.bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = torch.zeros_like(dup_sorted).scatter_(1, idx, dup_sorted)
        ok = ~(bad | dup)
        order = torch.sort((~ok).to(torch.int8), dim=1, stable=True).indices[:, :n]
        picked = torch.gather(draw, 1, order)
        return torch.where(torch.gather(ok, 1, order), picked, torch.full_like(picked, -1))

    def state(self):
        return {"stage": self.stage, "best": self.best, "bad": self.bad}

    def load_state(self, state):
        self.stage, self.best, self.bad = int(state["stage"]), float(state["best"]), int(state["bad"])

    def log_fields(self):
        return {**super().log_fields(), "cl_stage": self.stage, "cl_groups": list(self.stages[self.stage])}


class DCDObjective(BaselineObjective):
    """DCD (Lee & Kim, CIKM'21) combined with RRD: L_RRD + L_DCD over the E4 ensemble top-K.

    Rank gaps Δ = r_student - r_teacher of the teacher's items, with the student's ranks among the
    unobserved items refreshed once per epoch (before its first step, from the scores of the whole
    catalogue in user blocks, exact up to rank K + 10ε where the weight saturates);
    `baseline_losses.dcd_loss` puts the under-estimated items (Δ > 0) above the over-estimated ones (Δ < 0),
    weighted by tanh(|Δ|/ε).
    """

    name = "dcd"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.eps = cfg.baselines.dcd_eps
        # Ranks beyond K + 10ε need not be exact: Δ > 10ε there, and tanh(Δ/ε) is 1 in float32.
        self.rank_cap = self.topk + int(math.ceil(10 * self.eps))
        self.block = max(1, cfg.baselines.rank_block)
        self._ranked_epoch = -1
        self._frac_under = 0.0
        self.register_buffer("ranks", torch.zeros(0, 0, dtype=torch.int32), persistent=False)

    @torch.no_grad()
    def refresh_ranks(self, model: Student) -> None:
        """The student's 0-based rank (among unobserved items) of every target of this rank's users."""
        train, dev = self.data.train, self.targets.device
        out = torch.empty_like(self.targets)
        n = self.targets.shape[0]
        for r0 in range(0, n, self.block):
            r1 = min(r0 + self.block, n)
            users = torch.arange(self.lo + r0, self.lo + r1, device=dev)
            logits = model.scores(users).clamp(-self.clamp, self.clamp)
            sub = train.rows(r0, r1)
            observed = torch.zeros(r1 - r0, self.n_items, dtype=torch.bool, device=dev)
            rows = torch.from_numpy(np.repeat(np.arange(r1 - r0), sub.lengths())).to(dev)
            observed[rows, torch.from_numpy(sub.items.astype(np.int64)).to(dev)] = True
            out[r0:r1] = baseline_losses.unobserved_ranks(
                logits, observed, self.targets[r0:r1].long(), self.rank_cap
            ).to(torch.int32)
        self.ranks = out
        valid = self.targets >= 0
        gaps = out.long() - torch.arange(self.targets.shape[1], device=dev)[None, :]
        self._frac_under = float(((gaps > 0) & valid).sum() / valid.sum().clamp(min=1))
        self._ranked_epoch = self.epoch

    def kd_loss(self, model, batch):
        if self._ranked_epoch != self.epoch:
            was = model.training
            model.eval()
            self.refresh_ranks(model)
            model.train(was)
        a, c = model.user_side(batch.users), model.item_side()
        t = self.targets[batch.rows].long()
        s = losses.list_logits(a, c, t, self.clamp)
        valid = t >= 0
        rrd = losses.pl_loss(s, valid, self.tail(a, c, batch, t))
        delta = self.ranks[batch.rows].long() - torch.arange(t.shape[1], device=t.device)[None, :]
        return rrd + baseline_losses.dcd_loss(s, valid, delta, self.eps)

    def log_fields(self):
        return {**super().log_fields(), "dcd_under_frac": round(self._frac_under, 4)}
