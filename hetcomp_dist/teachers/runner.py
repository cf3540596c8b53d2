"""One teacher's whole stage, in one process and without Ray: train (or resume), pick E1..E4,
export the trajectory, write metrics.json and commit the manifest last.

Idempotent: a committed teacher is returned as is; an interrupted one resumes from its checkpoint
(training) or redoes its export (exports are cheap next to training and overwrite shards atomically).
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable

import torch

from hetcomp_dist import storage
from hetcomp_dist.config import APPROXIMATE_INDEXES, Config, EvalConfig, to_dict
from hetcomp_dist.data.dataset import load_manifest, load_split
from hetcomp_dist.evaluation.evaluate import (
    evaluate_embeddings,
    evaluate_ranking,
    evaluate_scorer,
    evaluate_topk,
)
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.models.registry import model_class
from hetcomp_dist.progress import log, peak_rss_gib
from hetcomp_dist.resources import this_node
from hetcomp_dist.teachers.fit import fit, load_checkpoint, remove_file, resolve
from hetcomp_dist.teachers.trajectory import N_STATES, RECALL_Z, Ranker, choose_states, export_trajectory

# fields that change nothing a teacher computes (resources, logging, housekeeping)
_NEUTRAL = (
    "names",
    "num_cpus",
    "num_gpus",
    "max_restarts",
    "progress_every_s",
    "keep_snapshots",
    "export_batch_size",
    "export_recall_users",
    "mf",
    "ml",
    "dnn",
    "gnn",
    "ae",
    "iae",
    "als",
    "iknn",
    "rp3",
)
# model fields only their own family reads: kept out of the other teachers' hashes, so that setting
# them never retrains a teacher that does not use them
_FAMILY_FIELDS = {
    "als": ("als_alpha", "als_reg"),
    "iknn": ("iknn_k", "iknn_shrink"),
    "rp3": ("rp3_k", "rp3_alpha", "rp3_beta"),
    "gnn": ("gnn_refresh_every", "gnn_walks"),
    "ae": ("ae_decoder_samples",),
    "iae": ("iae_hash_buckets", "iae_max_logits", "iae_decoder_samples", "iae_softmax_block", "iae_score"),
}


def teacher_threads(cfg: Config) -> int:
    """Torch threads of a teacher's training and export: one per whole CPU its actor holds. Part of the
    teacher's hash: a product split over 2 threads sums in another order than over 1, and the exports
    differ (docs/RESULTS.md, "Reproducibility")."""
    return max(1, int(cfg.teachers.num_cpus))


def teacher_hash(cfg: Config, name: str, data_hash: str) -> str:
    """Config hash of teacher `name`: the data, the shared teacher settings, its own overrides, the
    retrieval settings (an approximate index changes the exported lists) and the torch threads."""
    foreign = {f for family, fields in _FAMILY_FIELDS.items() if family != name for f in fields}
    shared = {
        k: v for k, v in dataclasses.asdict(cfg.teachers).items() if k not in _NEUTRAL and k not in foreign
    }
    if shared.get("iae_softmax_block") == 0:  # one block: the item-AE as trained before the option
        del shared["iae_softmax_block"]
    if shared.get("iae_score") == "logit":  # the item-AE as it ranked before the option
        del shared["iae_score"]
    for f in ("ae_decoder_samples", "iae_decoder_samples"):
        if shared.get(f) == 0:  # the full softmax: the hashes of autoencoders trained before the option hold
            del shared[f]
        elif f in shared and cfg.teachers.sparse_updates:
            # sampled decoder rows take row-wise updates (VAECore.dec_rows), which they did not before
            shared["sparse_decoder"] = True
    if name == "ae" and cfg.teachers.sparse_updates:
        shared["sparse_encoder_input"] = True  # VAECore.sparse_input: row-wise, where it was dense before
    if cfg.teachers.export_index not in APPROXIMATE_INDEXES:
        # read by an approximate index only: the candidate path, and the search sized on a sample
        del shared["export_candidates"], shared["export_recall_target"], shared["export_exact_share"]
    else:
        if name == "dnn":  # NeuMF's candidate vectors carry a linear fit of its MLP term since 2026-12-08
            shared["candidate_vectors"] = "mlp_linear_fit"
        if cfg.teachers.export_recall_target > 0:
            shared["export_recall_users"] = cfg.teachers.export_recall_users  # the calibration sample's size
            shared["export_recall_margin_z"] = RECALL_Z  # its margin sizes the search too
        else:
            del shared["export_exact_share"]  # read only by the calibration
    own = dataclasses.asdict(getattr(cfg.teachers, name))
    ev = {
        k: v
        for k, v in dataclasses.asdict(cfg.eval).items()
        if k not in ("batch_size", "distributed_min_users", "max_tasks")
    }
    return storage.config_hash("teacher", name, data_hash, shared, own, ev, {"threads": teacher_threads(cfg)})


def export_eval(cfg: Config) -> EvalConfig:
    """The retrieval settings of the teachers stage: eval's, with ``teachers.export_index`` when set."""
    return dataclasses.replace(cfg.eval, index=cfg.teachers.export_index or cfg.eval.index)


def export_candidates(cfg: Config) -> int:
    """Candidates per user of the candidate-then-rescore path: only with an approximate export_index."""
    t = cfg.teachers
    return t.export_candidates if t.export_index in APPROXIMATE_INDEXES else 0


def evaluate_ranker(run: str, ranker: Ranker, eval_cfg: EvalConfig, splits=("valid", "test")) -> dict:
    """{split: {"R@10", "N@10", "R@50", "N@50"}} of one model state, through the project's evaluation
    (the ranker's own top-k with an approximate index or on its candidate path, FAISS for exact
    embedding models, score blocks otherwise),
    in this process: the teacher's actor is already the unit of parallelism."""
    if ranker.candidates or ranker.approximate:
        # the ranker's own index: the search the export sized (teachers.export_recall_target), not a new
        # index at eval_cfg's settings
        return evaluate_topk(run, ranker.topk, eval_cfg, tuple(splits))
    if ranker.index is not None:
        return evaluate_embeddings(
            run, ranker.user_emb, ranker.item_emb, ranker.metric, eval_cfg, tuple(splits), distributed=False
        )
    # score blocks are (batch, n_items): keep them as small as the export's
    small = dataclasses.replace(eval_cfg, batch_size=min(eval_cfg.batch_size, ranker.score_batch))
    return evaluate_scorer(run, ranker.score_fn, small, tuple(splits), distributed=False)


def evaluate_state(run: str, ranker: Ranker, folder: str, eval_cfg: EvalConfig, k: int) -> dict:
    """{split: metrics} of an exported state (`folder`: each user's top-`k` outside train, by `ranker`).

    With an approximate ranker each protocol's list is read off the exported one (its first items
    outside the protocol's set; a user whose list runs short is ranked again: `evaluate_ranking`'s
    refill), where `evaluate_ranker` would search twice more. The lists are those `evaluate_topk` gives,
    except on the candidate path, where the candidates are the export's (drawn outside train) rather
    than drawn per protocol (NeuMF at 100k users: the same metrics to 1e-15). So is a state that an
    approximate export index handed to the exact ranker (`calibrate_breadth`'s ``exact``): at the sizes
    that configure one, a search is what costs. Exact rankers of an exact export keep `evaluate_ranker`
    (FAISS or score blocks: one search for both protocols already)."""
    if ranker.candidates or ranker.approximate or eval_cfg.index in APPROXIMATE_INDEXES:
        return evaluate_ranking(run, folder, tuple(eval_cfg.ks), ("valid", "test"), refill=(ranker.topk, k))
    return evaluate_ranker(run, ranker, eval_cfg, ("valid", "test"))


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far."""
    return sum(resource.getrusage(resource.RUSAGE_SELF)[:2])


def run_teacher(
    run: str, cfg: Config, name: str, device: str = "cpu", on_progress: Callable[[dict], None] | None = None
) -> dict:
    """Trains and exports teacher `name` of `run`; returns its committed manifest.

    Args:
        run: the run folder (its data stage must be committed).
        cfg: the whole config (teachers and eval sections are used).
        name: a key of TEACHERS.
        device: torch device for training and scoring.
        on_progress: receives the training loop's status dicts.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(teacher_threads(cfg))  # what the hash says, in an actor or in-process alike
    try:
        return _run_teacher(run, cfg, name, device, on_progress)
    finally:
        torch.set_num_threads(threads)


def _run_teacher(
    run: str, cfg: Config, name: str, device: str, on_progress: Callable[[dict], None] | None
) -> dict:
    t_start = time.perf_counter()
    m = load_manifest(run)
    layout = RunLayout(run)
    tdir = layout.teacher(name)
    h = teacher_hash(cfg, name, m["config_hash"])
    done = storage.stage_is_done(tdir, h)
    if done is not None:
        log(f"teacher {name}", f"{tdir} is up to date (config {h}); skipping")
        return done
    if load_checkpoint(layout.teacher_checkpoint(name), h) is None:
        storage.begin_stage(tdir)  # nothing of this config to resume: start clean
    train = load_split(run, "train", m)
    params, model_cfg = resolve(cfg.teachers, name)
    torch.manual_seed(cfg.teachers.seed)
    cls = model_class(name, model_cfg)
    model = cls(m["n_users"], m["n_items"], model_cfg, train).to(device)

    ecfg, cands = export_eval(cfg), export_candidates(cfg)

    def valid(model_) -> dict:
        ranker = Ranker(model_, train, ecfg, cfg.teachers.export_batch_size, cands)
        return evaluate_ranker(run, ranker, ecfg, ("valid",))["valid"]

    cpu_fit = _cpu_s()
    result = fit(model, train, layout, name, params, valid, h, on_progress)
    cpu_export = _cpu_s()
    states = choose_states(result["snapshots"], result["best_epoch"])
    states_dirs = [layout.teacher_state(name, i) for i in range(1, N_STATES + 1)]
    for folder in [*states_dirs, layout.teacher_observed(name)]:
        storage.begin_stage(folder)  # clears the leftovers of an interrupted export
    t_export = time.perf_counter()
    traj = export_trajectory(
        model,
        train,
        layout,
        name,
        states,
        m["n_users"],
        m["shard_size"],
        cfg.teachers.topk,
        ecfg,
        lambda ranker, folder: evaluate_state(run, ranker, folder, ecfg, cfg.teachers.topk),
        cfg.teachers.export_batch_size,
        candidates=cands,
        recall_users=cfg.teachers.export_recall_users,
        recall_target=cfg.teachers.export_recall_target,
        exact_share=cfg.teachers.export_exact_share,
        seed=cfg.teachers.seed,
    )
    export_s = time.perf_counter() - t_export
    cpu_end = _cpu_s()
    if result["history"] and result["history"][-1]["valid"] is None:
        # fit left its only evaluation (the last epoch, the best one) to the export: E4 is that state
        e4 = next(s for s in traj["states"] if s["state"] == N_STATES)
        result["history"][-1]["valid"] = e4["valid"]
        result["best_valid"] = float(e4["valid"]["R@50"])
    if on_progress is not None:
        on_progress(
            {
                "epoch": result["epochs"],
                "best_valid_R@50": result["best_valid"],
                "best_epoch": result["best_epoch"],
                "phase": "exported",
                "done": True,
                "peak_rss_gib": peak_rss_gib(),
            }
        )
    metrics = {
        "teacher": name,
        "model": cls.__name__,
        "convergence_epoch": result["best_epoch"],
        "best_valid_R@50": result["best_valid"],
        "epochs": result["epochs"],
        "stop": result["stop"],
        "state_epochs": states,
        "states": traj["states"],
        "history": result["history"],
        "resumed_from": result["resumed_from"],
        "train_s": result["train_s"],
        "eval_s": result["eval_s"],
        "export_s": export_s,
        "wall_s": result["train_s"] + result["eval_s"] + export_s,
        "attempt_wall_s": time.perf_counter() - t_start,
        "peak_rss_gib": peak_rss_gib(),
        "model_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
        # CPU seconds of this process (not of crashed attempts): a figure that contention does not inflate
        "cpu_s": cpu_end,
        # the two phases' CPU seconds in this attempt: training grows with the users, an exact export
        # with users x items (docs/PERFORMANCE.md projects them apart)
        "train_cpu_s": cpu_export - cpu_fit,
        "export_cpu_s": cpu_end - cpu_export,
        "node": this_node(),  # where the actor that trained and exported it ran
        "params": dataclasses.asdict(params),
    }
    storage.write_json_atomic(layout.teacher_metrics(name), metrics)
    if not cfg.teachers.keep_snapshots:
        for e in result["snapshots"]:
            if e not in states:
                remove_file(layout.teacher_snapshot(name, e))
    manifest = {
        "config_hash": h,
        "teacher": name,
        "model": cls.__name__,
        "K": cfg.teachers.topk,
        "state_epochs": states,
        "convergence_epoch": result["best_epoch"],
        "n_users": m["n_users"],
        "n_items": m["n_items"],
        "shard_size": m["shard_size"],
        "n_shards": storage.n_shards(m["n_users"], m["shard_size"]),
        "snapshots": {
            f"state={i + 1}": storage.relative(layout.teacher_snapshot(name, e), tdir)
            for i, e in enumerate(states)
        },
        "test": traj["states"][-1]["test"],
        "valid": traj["states"][-1]["valid"],
        "wall_s": metrics["wall_s"],
        "node": metrics["node"],
    }
    storage.write_manifest(tdir, manifest, to_dict(cfg))
    log(f"teacher {name}", f"committed {tdir}: states {states}, test R@50 {manifest['test']['R@50']:.4f}")
    return storage.read_manifest(tdir)
