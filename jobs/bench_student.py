"""Benchmark of the student: epoch time of the exact HetComp losses (fresh and past the logit clamp),
the 2-worker DDP speed-up, and DDP traffic vs users.

    python jobs/bench_student.py [--workdir DIR] [--citeulike PATH] [--repeats 3] [--threads N]
                                 [--reference-steps 4] [--skip-ddp] [--ddp-epochs 3]
                                 [--ddp-users 10000,100000]

1. CiteULike size, in-process, one worker (the real CiteULike run when --citeulike exists: 5,219
   users, 25,181 items, ~79k train interactions; else a synthetic run of that size). Knowledge =
   random targets (K = 100) and P+ (10): timing does not depend on their quality. One training
   epoch (batches of 1,024 interactions, their unique users, exact full-catalogue tails, Adam) with
   L_O and one with L_F through the trainer's own code path (BatchSampler + HetCompObjective),
   medians of --repeats; side by side, two references of the same L_O written here:
   (a) `dense`: the paper code's shape -- a (B, n_items) clamped score matrix, masks, exp and sums;
   (b) `loop`: a plain per-user loop (each user's row, its masked tail, its terms) -- timed on
       --reference-steps steps and scaled to an epoch.
   Both are checked to give the same loss as the fast path on the same batch; the references are
   timed on their first steps (dense: 5 x --reference-steps) and scaled to the epoch's step count.
   Also: an epoch with the sampled tail (4,096 items), and the sampled estimator's bias against the
   exact tail after training (mean of log Ẑ - log Z over a batch) for several sample sizes.
2. Steady state: L_O and L_F epochs once the logit clamp engages, alternating with the fresh ones on
   the same batches (L_O also on torch's blocked tail kernel, `student.tail_kernel=torch`, beside the
   default fused one: `fused_speedup_lo`, `fused_speedup_lo_steady`). A copy of the fresh model has
   its user and item tables scaled alike so that 2 % of (user, item) pairs have ||a_u|| ||c_j|| above
   the clamp (`STEADY_PAIR_SHARE`). Why scaled rather than trained past the clamp: with random targets
   the student's norms grow slowly (max ||a|| ||c|| by about 1 per epoch), so reaching the clamp would
   take ~40 epochs of bench time, and past it the torch kernel's cost depends on which blocks of logits
   *can* clip (the norm bound), not on how many do (the fused kernel clamps every logit alike). The
   2 % is what an MF student trained on CiteULike with learnable (user-kNN) targets showed once past
   the clamp: ~0.6 % of pairs at max ||a|| ||c|| = 2.2 x clamp, ~2.7 % at 3.4 x, with 0.003 % and 0.1 %
   of the logits actually clipped. The scaled state's figures are reported (steady_*).
3. `ddp2_speedup`: the 1-thread single-process L_O epoch over the 2-worker DDP epoch on the same run
   (`train_student`, Ray Train, gloo, 2 workers x 1 thread, fresh model, --ddp-epochs + 1 epochs, the
   first of each side dropped as warm-up, medians), measured side by side: before each DDP epoch, rank
   0 runs one single-process epoch of the whole run on one thread (`solo_epoch_then_mark`) while rank 1
   waits asleep, so each pair of epochs shares the host's minute (this host's speed drifts by a fifth
   within minutes; timing all single-process epochs first and all DDP epochs after let the drift into
   the ratio: 1.13-1.69 over five runs). `ddp2_pair_ratios` are the pairs' ratios. The DDP epoch is rank
   0's `epoch_s` (the training epoch alone: no evaluation, DKC round, checkpoint or single-process
   epoch). `ddp2_driver_epoch_s`: the same single-process epochs in the driver before the training, a
   check that the in-worker side is not slowed. `ddp2_speedup_cpu` divides the single-process epoch's
   CPU seconds by the slower rank's training-thread CPU seconds per epoch (what two free cores would
   give, without the ranks' waits for each other). `ddp2_plain_*` (unless --skip-no-ray): the same
   ranks, loop and alternation as two plain torch.distributed processes without Ray, which separates
   the training code's own cost from that of Ray's processes beside it (docs/PERFORMANCE.md).
4. DDP traffic: `train_student` with 2 gloo workers for one epoch on synthetic runs of
   --ddp-users users (same items); bytes handed to all-reduce per step, from the comm hook, next to
   what the user table would have cost.

Ends with one JSON line: epoch_s_lo, epoch_s_lf, epoch_s_lo_steady, epoch_s_lf_steady, ddp2_speedup,
reference_epoch_s_lo (the per-user loop), dense_epoch_s_lo, and the rest.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install
# Before torch loads OpenMP: idle threads sleep instead of spinning (spinning threads starve each
# other on a small shared host); one thread by default, like a Train worker.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.nn import functional  # noqa: E402

from hetcomp_dist import storage  # noqa: E402
from hetcomp_dist.config import DataConfig, load_config  # noqa: E402
from hetcomp_dist.layout import RunLayout  # noqa: E402
from hetcomp_dist.models.registry import build_student  # noqa: E402
from hetcomp_dist.models.rowwise import RowwiseAdam  # noqa: E402
from hetcomp_dist.objectives import losses  # noqa: E402
from hetcomp_dist.objectives.base import TrainTask  # noqa: E402
from hetcomp_dist.objectives.registry import build_objective  # noqa: E402
from hetcomp_dist.progress import log, peak_rss_gib  # noqa: E402
from hetcomp_dist.provenance import environment  # noqa: E402
from hetcomp_dist.student import knowledge_io  # noqa: E402
from hetcomp_dist.student.batching import BatchSampler, RankData  # noqa: E402
from hetcomp_dist.student.hooks import TrainHooks  # noqa: E402
from hetcomp_dist.testing.toyrun import replay_round, write_random_knowledge  # noqa: E402

STAGE = "bench_student"
# share of (user, item) pairs whose norm bound ||a_u|| ||c_j|| passes the clamp in the steady state
STEADY_PAIR_SHARE = 0.02
CITEULIKE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "data",
    "citeulike",
    "users.dat",
)


# ------------------------------------------------------------------------------------- inputs
def citeulike_run(workdir: str, path: str) -> str:
    run = os.path.join(workdir, "citeulike")
    if os.path.exists(path):
        from hetcomp_dist.data.ingest import ingest

        ingest(run, DataConfig(input=os.path.abspath(path), format="citeulike"))
    else:  # same size, synthetic
        from hetcomp_dist.data.synth import synthesize

        cfg = load_config(None, ["synth.users=5219", "synth.items=25181", "synth.mean_interactions=24"])
        synthesize(run, cfg.synth, cfg.data)
    if knowledge_io.round_manifest(run, 0) is None:
        write_random_knowledge(run)
    return run


def setup(run: str, switched: bool, tail: str = "exact"):
    cfg = load_config(None, [f"student.tail={tail}"])
    data = RankData.load(run, 0, 1)
    torch.manual_seed(0)
    task = TrainTask(
        build_student("mf", data.n_users, data.n_items, cfg.student), build_objective("hetcomp", cfg)
    )
    targets, pos = knowledge_io.load_round(run, 0, 0, data.n_users)
    task.objective.set_knowledge(0, {"switch": switched, "means": {}}, targets, pos)
    opt = RowwiseAdam(task.parameters(), lr=cfg.student.lr, weight_decay=cfg.student.weight_decay)
    return task, opt, BatchSampler(data, cfg.student.batch_size, 0, 1, 0)


def step(task, opt, loss_fn, batch) -> float:
    loss = loss_fn(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def rounded(xs: list[float]) -> list[float]:
    return [round(x, 2) for x in xs]


def time_epoch(task, opt, sampler, epoch, loss_fn=None) -> float:
    loss_fn = loss_fn or task
    t0 = time.perf_counter()
    for batch in sampler.epoch(epoch):
        step(task, opt, loss_fn, batch)
    return time.perf_counter() - t0


def alternating_epochs(runs: list, sampler: BatchSampler, repeats: int, first: int) -> list[list[float]]:
    """Epoch times of several (task, opt) on the same batches, taking turns (the order flips each round)."""
    out: list[list[float]] = [[] for _ in runs]
    for r in range(repeats):
        for i in range(len(runs)) if r % 2 == 0 else reversed(range(len(runs))):
            out[i].append(time_epoch(*runs[i], sampler, first + r))
    return out


@torch.no_grad()
def past_the_clamp(task: TrainTask, opt: torch.optim.Optimizer, batch, share: float = STEADY_PAIR_SHARE):
    """A copy of the MF `task` whose user and item tables are scaled alike so that `share` of (user,
    item) pairs have ||a_u|| ||c_j|| above the logit clamp, with an Adam of `opt`'s settings.

    Returns:
        (task copy, its optimiser, figures of the state: pair share, max bound / clamp, clipped share
        of `batch`'s logits, scale).
    """
    steady = copy.deepcopy(task)
    m, clamp = steady.model, steady.objective.clamp
    an, cn = m.user_emb.weight.norm(dim=1), m.item_emb.weight.norm(dim=1)
    g = torch.Generator().manual_seed(0)
    n = 1_000_000  # sampled (user, item) pairs: the share's standard error is ~0.014 percentage points
    pairs = an[torch.randint(len(an), (n,), generator=g)] * cn[torch.randint(len(cn), (n,), generator=g)]
    scale = clamp / float(torch.quantile(pairs, 1.0 - share))
    m.user_emb.weight.mul_(scale**0.5)
    m.item_emb.weight.mul_(scale**0.5)
    logits = m.user_side(batch.users) @ m.item_side().T
    figures = {
        "steady_pair_share": float((pairs * scale > clamp).double().mean()),
        "steady_norm_bound_over_clamp": float(an.max() * cn.max()) * scale / clamp,
        "steady_clipped_share": float((logits.abs() > clamp).double().mean()),
        "steady_scale": scale,
    }
    hyper = {k: opt.defaults[k] for k in ("lr", "weight_decay")}
    return steady, RowwiseAdam(steady.parameters(), **hyper), figures


def with_kernel(task: TrainTask, opt: torch.optim.Optimizer, kernel: str):
    """A copy of `task` whose exact tail runs on `kernel` (student.tail_kernel), with a fresh Adam of
    `opt`'s settings: the same training, timed on another kernel."""
    other = copy.deepcopy(task)
    cfg = other.objective.cfg
    other.objective.cfg = dataclasses.replace(
        cfg, student=dataclasses.replace(cfg.student, tail_kernel=kernel)
    )
    hyper = {k: opt.defaults[k] for k in ("lr", "weight_decay")}
    return other, RowwiseAdam(other.parameters(), **hyper)


def time_steps(task, opt, sampler, epoch, loss_fn, n) -> float:
    """Seconds per step over the first n steps of an epoch (references too slow for whole epochs)."""
    it = iter(sampler.epoch(epoch))
    t0 = time.perf_counter()
    for _ in range(n):
        step(task, opt, loss_fn, next(it))
    return (time.perf_counter() - t0) / n


# --------------------------------------------------------------------------------- references
def dense_lo(task: TrainTask, batch) -> torch.Tensor:
    """L_O the way the paper's code computes it: a (B, n_items) matrix, masks, exp and sums."""
    m, o = task.model, task.objective
    S = (m.user_side(batch.users) @ m.item_side().T).clamp(-40, 40)
    B, N = S.shape
    pos, tg = o.pos[batch.rows].long(), o.targets[batch.rows].long()
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[batch.train_rows, batch.train_items] = False
    rows = torch.arange(B)[:, None].expand_as(tg)
    keep[rows[tg >= 0], tg[tg >= 0]] = False
    tail = (S.exp() * keep).sum(1, keepdim=True)
    items = torch.cat([pos, tg], 1)
    s = torch.gather(S, 1, items.clamp(min=0))
    terms = -(s - torch.log(s.exp() + tail))
    return 0.01 * (terms * (items >= 0)).sum()


def loop_lo(task: TrainTask, batch) -> torch.Tensor:
    """L_O one user at a time: the user's score row, its masked tail, then its P+ and T terms."""
    m, o = task.model, task.objective
    a, c = m.user_side(batch.users), m.item_side()
    total = torch.zeros(())
    for b in range(len(batch.users)):
        s = (c @ a[b]).clamp(-40, 40)
        pos = [int(i) for i in o.pos[batch.rows[b]] if i >= 0]
        tg = [int(i) for i in o.targets[batch.rows[b]] if i >= 0]
        keep = torch.ones(len(s), dtype=torch.bool)
        keep[batch.train_items[batch.train_rows == b]] = False
        keep[tg] = False
        tail = torch.logsumexp(s[keep], 0)
        for i in pos + tg:
            total = total + functional.softplus(tail - s[i])
    return 0.01 * total


def bench_citeulike(run: str, repeats: int, ref_steps: int) -> dict:
    out: dict = {}
    task, opt, sampler = setup(run, switched=False)
    out["steps_per_epoch"] = sampler.steps
    batch = next(iter(sampler.epoch(1)))
    out["users_per_batch"] = int(len(batch.users))
    with torch.no_grad():
        fast, dense, loop = float(task(batch)), float(dense_lo(task, batch)), float(loop_lo(task, batch))
    out["check_rel_diff_dense"] = abs(dense - fast) / abs(fast)
    out["check_rel_diff_loop"] = abs(loop - fast) / abs(fast)
    log(STAGE, f"L_O on one batch: fast {fast:.6f}, dense {dense:.6f}, loop {loop:.6f}")
    time_epoch(task, opt, sampler, 1)  # warm-up (allocator, first-touch)
    task_p, opt_p, steady = past_the_clamp(task, opt, batch)
    out.update(steady)
    log(
        STAGE,
        f"steady state: x{steady['steady_scale']:.1f}, {100 * steady['steady_pair_share']:.2f} % of pairs "
        f"over the bound, max bound {steady['steady_norm_bound_over_clamp']:.2f} x clamp, "
        f"{100 * steady['steady_clipped_share']:.3f} % of a batch's logits clipped",
    )
    time_epoch(task_p, opt_p, sampler, 1)
    # the same epochs on torch's blocked tail kernel, side by side (student.tail_kernel=torch)
    task_t, opt_t = with_kernel(task, opt, "torch")
    task_tp, opt_tp = with_kernel(task_p, opt_p, "torch")
    lo, lo_steady, lo_t, lo_steady_t = alternating_epochs(
        [(task, opt), (task_p, opt_p), (task_t, opt_t), (task_tp, opt_tp)], sampler, repeats, 2
    )
    log(STAGE, f"L_O epochs: {rounded(lo)} s, past the clamp {rounded(lo_steady)} s")
    log(STAGE, f"  on torch's tail kernel: {rounded(lo_t)} s, past the clamp {rounded(lo_steady_t)} s")
    dense_step = time_steps(
        task, opt, sampler, 10, lambda b: dense_lo(task, b), min(sampler.steps, 5 * ref_steps)
    )
    log(STAGE, f"dense reference: {dense_step:.3f} s/step over {min(sampler.steps, 5 * ref_steps)} steps")
    loop_step = time_steps(task, opt, sampler, 20, lambda b: loop_lo(task, b), ref_steps)
    log(STAGE, f"per-user loop reference: {loop_step:.2f} s/step over {ref_steps} steps")
    task_f, opt_f, sampler_f = setup(run, switched=True)
    time_epoch(task_f, opt_f, sampler_f, 1)
    task_fp, opt_fp, _ = past_the_clamp(task_f, opt_f, batch)
    time_epoch(task_fp, opt_fp, sampler_f, 1)
    lf, lf_steady = alternating_epochs([(task_f, opt_f), (task_fp, opt_fp)], sampler_f, repeats, 2)
    log(STAGE, f"L_F epochs: {rounded(lf)} s, past the clamp {rounded(lf_steady)} s")
    task_s, opt_s, sampler_s = setup(run, switched=False, tail="sampled")
    sampled = [time_epoch(task_s, opt_s, sampler_s, 1 + r) for r in range(repeats)]
    out.update(
        epoch_s_lo=statistics.median(lo),
        epoch_s_lf=statistics.median(lf),
        epoch_s_lo_steady=statistics.median(lo_steady),
        epoch_s_lf_steady=statistics.median(lf_steady),
        epoch_s_lo_steady_runs=lo_steady,
        epoch_s_lf_steady_runs=lf_steady,
        dense_epoch_s_lo=dense_step * sampler.steps,
        reference_epoch_s_lo=loop_step * sampler.steps,
        reference_steps_timed=ref_steps,
        dense_steps_timed=min(sampler.steps, 5 * ref_steps),
        epoch_s_lo_sampled_4096=statistics.median(sampled),
        epoch_s_lo_runs=lo,
        epoch_s_lf_runs=lf,
    )
    out.update(
        epoch_s_lo_torch_kernel=statistics.median(lo_t),
        epoch_s_lo_steady_torch_kernel=statistics.median(lo_steady_t),
    )
    out["fused_speedup_lo"] = out["epoch_s_lo_torch_kernel"] / out["epoch_s_lo"]
    out["fused_speedup_lo_steady"] = out["epoch_s_lo_steady_torch_kernel"] / out["epoch_s_lo_steady"]
    out["speedup_vs_loop"] = out["reference_epoch_s_lo"] / out["epoch_s_lo"]
    out["speedup_vs_dense"] = out["dense_epoch_s_lo"] / out["epoch_s_lo"]
    out.update(sampled_bias(task, batch))
    return out


@torch.no_grad()
def sampled_bias(task: TrainTask, batch, draws: int = 10) -> dict:
    """Mean (and mean absolute) log Ẑ - log Z over the users of a batch, for the model as trained and
    with its user vectors scaled x4 / x16 (sharper score distributions, as later in training)."""
    m, o = task.model, task.objective
    a0, c = m.user_side(batch.users), m.item_side()
    tg = o.targets[batch.rows].long()
    xr, xc = losses.exclude_lists(batch.train_rows, batch.train_items, tg, c.shape[0])
    g = torch.Generator().manual_seed(0)
    out = {}
    for scale in (1, 4, 16):
        a = a0 * scale
        exact = losses.tail_logsumexp(a, c, xr, xc)
        for n in (256, 1024, 4096, 16384):
            diff = torch.stack(
                [losses.sampled_tail_logsumexp(a, c, xr, xc, n, g) - exact for _ in range(draws)]
            )
            out[f"sampled_bias_{n}_x{scale}"] = float(diff.mean())
            out[f"sampled_abs_err_{n}_x{scale}"] = float(diff.abs().mean())
        log(
            STAGE,
            f"sampled tail, scores x{scale}: bias (mean log Zhat - log Z) "
            + ", ".join(f"{n}: {out[f'sampled_bias_{n}_x{scale}']:+.4f}" for n in (256, 1024, 4096, 16384)),
        )
    return out


# ------------------------------------------------------------------------------------ DDP
def start_ray() -> None:
    import ray

    if not ray.is_initialized():  # CPUs are scheduling tokens: 2 workers x 0.5 CPU plus the driver's tasks
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)


_SOLO: dict = {}  # per process: the single-process (task, opt, sampler) that rank 0 times between DDP epochs


def solo_epoch_then_mark(rank: int, epoch: int, run: str, path: str) -> None:
    """`TrainHooks.epoch_start` of `bench_ddp2`: on rank 0, one 1-thread single-process L_O epoch of the
    whole run (the in-process side of `ddp2_speedup`) just before DDP epoch `epoch`, while rank 1 waits
    asleep at its first exchange (gloo does not spin); then every rank appends its training-thread CPU
    clock (and rank 0 the solo epoch's wall and CPU seconds) to `path`."""
    rec: dict = {"rank": rank, "epoch": epoch}
    if rank == 0:
        if run not in _SOLO:
            _SOLO[run] = setup(run, switched=False)
        threads = torch.get_num_threads()
        if threads != 1:
            raise RuntimeError(f"the in-process side of ddp2_speedup runs on one thread, not {threads}")
        c0 = time.thread_time()
        rec["solo_s"] = time_epoch(*_SOLO[run], epoch)
        rec["solo_cpu_s"] = time.thread_time() - c0
    rec["cpu"] = time.thread_time()
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def ddp2_overrides(epochs: int) -> list[str]:
    return [
        "student.num_workers=2",
        "student.threads_per_worker=1",
        f"student.max_epochs={epochs + 2}",  # the last epoch only closes the CPU clock of the one before
        f"student.eval_every={epochs + 2}",
        "knowledge.period=1000",  # no DKC round
    ]


def ddp2_figures(ddp: list[float], marks: str, epochs: int, prefix: str) -> dict:
    """Speed-ups from the DDP epochs of rank 0 (epochs 2..epochs+1) and the hook's marks."""
    clocks = [json.loads(x) for x in open(marks)]
    by_rank = {r: sorted((x for x in clocks if x["rank"] == r), key=lambda x: x["epoch"]) for r in (0, 1)}
    solo = [x["solo_s"] for x in by_rank[0]][1 : epochs + 1]
    solo_cpu = [x["solo_cpu_s"] for x in by_rank[0]][1 : epochs + 1]
    # a rank's training CPU in epoch e: its clock at the start of e + 1 less its clock at the start of e,
    # less (rank 0) the solo epoch run between them
    rank_cpu = []
    for r in (0, 1):
        c, sc = [x["cpu"] for x in by_rank[r]], [x.get("solo_cpu_s", 0.0) for x in by_rank[r]]
        rank_cpu.append([b - a - s for a, b, s in zip(c, c[1:], sc[1:])][1 : epochs + 1])
    return {
        f"{prefix}speedup": statistics.median(solo) / statistics.median(ddp),
        f"{prefix}speedup_cpu": statistics.median(solo_cpu) / max(statistics.median(c) for c in rank_cpu),
        f"{prefix}pair_ratios": [round(a / b, 3) for a, b in zip(solo, ddp)],
        f"{prefix}epoch_s": statistics.median(ddp),
        f"{prefix}epoch_s_runs": ddp,
        f"{prefix}rank_cpu_s_runs": rank_cpu,
        f"{prefix}inprocess_epoch_s": statistics.median(solo),
        f"{prefix}inprocess_epoch_s_runs": solo,
        f"{prefix}inprocess_cpu_s_runs": solo_cpu,
    }


def bench_ddp2(run: str, workdir: str, epochs: int, no_ray: bool = True) -> dict:
    """`ddp2_speedup` (module docstring, 3): a 2-worker DDP training whose epochs alternate with 1-thread
    single-process ones; the driver's own 1-thread epochs before it, as a check; and, with `no_ray`, the
    same two ranks without Ray (`ddp2_plain_*`)."""
    from hetcomp_dist.student.trainer import train_student

    start_ray()
    task, opt, sampler = setup(run, switched=False)
    driver = []
    assert torch.get_num_threads() == 1, "the in-process side of ddp2_speedup runs on one thread"
    for e in range(1, epochs + 2):
        driver.append(time_epoch(task, opt, sampler, e))
    log(STAGE, f"in-process 1-thread L_O epochs in the driver: {rounded(driver)} s")
    marks, out = os.path.join(workdir, "ddp2-epochs.jsonl"), os.path.join(workdir, "ddp2-student")
    hooks = TrainHooks(epoch_start=functools.partial(solo_epoch_then_mark, run=run, path=marks))
    train_student(run, load_config(None, ddp2_overrides(epochs)), dkc_fn=replay_round, hooks=hooks, out=out)
    lines = [json.loads(x) for x in open(RunLayout(run).student_metrics(out))]
    res = ddp2_figures([x["epoch_s"] for x in lines][1 : epochs + 1], marks, epochs, "ddp2_")
    res["ddp2_driver_epoch_s"] = statistics.median(driver[1:])
    res["ddp2_driver_epoch_s_runs"] = driver[1:]
    log(
        STAGE,
        f"2-worker DDP epochs {rounded(res['ddp2_epoch_s_runs'])} s, each after a 1-thread epoch on rank 0 "
        f"{rounded(res['ddp2_inprocess_epoch_s_runs'])} s: speed-up {res['ddp2_speedup']:.2f} "
        f"(pairs {res['ddp2_pair_ratios']}; by CPU seconds {res['ddp2_speedup_cpu']:.2f})",
    )
    if no_ray:
        import ray

        ray.shutdown()  # Ray's own processes (raylet, GCS, idle workers) go too; bench_ddp starts a new one
        res.update(bench_ddp2_plain(run, workdir, epochs))
    return res


def _plain_rank(rank: int, run: str, workdir: str, epochs: int, port: int) -> None:
    """One rank of `bench_ddp2_plain`: the Train loop's own build / wrap / train_epoch, no Ray."""
    import numba
    import torch.distributed as dist

    from hetcomp_dist.student import distributed, worker

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        job = worker.Job(run=run, cfg=load_config(None, ddp2_overrides(epochs)), out=workdir)
        w = worker.Worker(rank, 2, torch.device("cpu"))
        data, task, sampler, opt = worker.build(job, w)
        worker.load_knowledge(job, task, data, 0)
        net, comm = distributed.wrap(task, task.rank_local_names(), w.device)
        marks, times = os.path.join(workdir, "plain-epochs.jsonl"), []
        for e in range(1, epochs + 3):
            solo_epoch_then_mark(rank, e, run, marks)
            t0 = time.perf_counter()
            worker.train_epoch(net, task, opt, sampler, e, comm, TrainHooks())
            times.append(time.perf_counter() - t0)
        if rank == 0:
            with open(os.path.join(workdir, "plain-ddp.json"), "w") as f:
                json.dump(times, f)
    finally:
        dist.destroy_process_group()


def bench_ddp2_plain(run: str, workdir: str, epochs: int) -> dict:
    """The same two ranks and alternation as `bench_ddp2`, as two plain torch.distributed processes, with
    Ray shut down: what the training code reaches without Ray's processes beside it."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wd = os.path.join(workdir, "ddp2-plain")
    os.makedirs(wd, exist_ok=True)
    mp.spawn(_plain_rank, args=(run, wd, epochs, port), nprocs=2)
    ddp = json.load(open(os.path.join(wd, "plain-ddp.json")))[1 : epochs + 1]
    res = ddp2_figures(ddp, os.path.join(wd, "plain-epochs.jsonl"), epochs, "ddp2_plain_")
    log(
        STAGE,
        f"the same without Ray (2 torch.distributed processes): DDP epochs {rounded(ddp)} s, "
        f"speed-up {res['ddp2_plain_speedup']:.2f} (pairs {res['ddp2_plain_pair_ratios']})",
    )
    return res


def bench_ddp(workdir: str, users: list[int], items: int) -> dict:
    from hetcomp_dist.data.synth import synthesize
    from hetcomp_dist.student.trainer import train_student

    start_ray()
    out = {}
    for n in users:
        run = os.path.join(workdir, f"ddp-{n}")
        over = [
            f"synth.users={n}",
            f"synth.items={items}",
            "synth.mean_interactions=8",
            "synth.min_interactions=5",
            "data.shard_size=50000",
            "student.num_workers=2",
            "student.max_epochs=1",
        ]
        cfg = load_config(None, over)
        synthesize(run, cfg.synth, cfg.data)
        write_random_knowledge(run)
        res = train_student(run, cfg, dkc_fn=replay_round)
        m = storage.read_json(storage.manifest_path(RunLayout(run).data))
        out[f"allreduce_bytes_per_step_{n}"] = res["allreduce_bytes_per_step"]
        out[f"user_table_bytes_{n}"] = m["n_users"] * cfg.student.dim * 4
        out[f"steps_per_epoch_{n}"] = res["steps_per_epoch"]
        out[f"train_s_{n}"] = res["train_wall_s"]
        log(
            STAGE,
            f"{n} users: {res['allreduce_bytes_per_step']:.0f} B all-reduced per step "
            f"(user table would add {out[f'user_table_bytes_{n}']:,} B), {res['steps_per_epoch']} steps",
        )
    b = [out[f"allreduce_bytes_per_step_{n}"] for n in users]
    out["allreduce_bytes_per_step_ratio"] = b[-1] / b[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/bench_student")
    ap.add_argument("--citeulike", default=CITEULIKE)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--reference-steps", type=int, default=4)
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-epochs", action="store_true", help="only the DDP traffic part")
    ap.add_argument("--skip-no-ray", action="store_true", help="no ddp2_plain_* (the ranks without Ray)")
    ap.add_argument("--ddp-epochs", type=int, default=3, help="timed epochs of each side of ddp2_speedup")
    ap.add_argument("--ddp-users", default="10000,100000")
    ap.add_argument("--ddp-items", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(args.threads)
    args.workdir = os.path.abspath(args.workdir)  # Ray workers resolve paths from their own directory
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    res = {
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "device": "cpu",
        # figures of two hosts compare only as far as their CPUs do (ddp2_speedup above all)
        "cpu": environment()["cpu"],
        "load_avg_start": os.getloadavg()[0],
    }
    if not args.skip_epochs:
        run = citeulike_run(args.workdir, args.citeulike)
        # building the run in this process can leave torch with more threads than asked for (seen after
        # an ingest with FAISS loaded: 1 -> 2, OpenMP's setting changed under it), so set them again
        torch.set_num_threads(args.threads)
        m = storage.read_json(storage.manifest_path(RunLayout(run).data))
        src = m.get("source")
        res.update(
            dataset=src.get("format", "?") if isinstance(src, dict) else str(src),
            n_users=m["n_users"],
            n_items=m["n_items"],
            n_train=m["n_train"],
        )
        res.update(bench_citeulike(run, args.repeats, args.reference_steps))
        if not args.skip_ddp:
            res.update(bench_ddp2(run, args.workdir, args.ddp_epochs, not args.skip_no_ray))
    if not args.skip_ddp:
        res.update(bench_ddp(args.workdir, [int(x) for x in args.ddp_users.split(",")], args.ddp_items))
    res.update(
        peak_rss_gib=round(peak_rss_gib(), 3),
        bench_wall_s=round(time.perf_counter() - t0, 1),
        load_avg_end=os.getloadavg()[0],
    )
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
