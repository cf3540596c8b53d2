"""Evaluation equals an independent brute-force reference (full score matrix, argsort, exclusion)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hetcomp_dist import storage
from hetcomp_dist.cli import main as cli
from hetcomp_dist.config import EvalConfig
from hetcomp_dist.data.dataset import CSR, load_manifest, load_split
from hetcomp_dist.errors import InputError
from hetcomp_dist.evaluation.evaluate import (
    evaluate_embeddings,
    evaluate_lists,
    evaluate_scorer,
    protocol_lists,
    protocol_lists_blocked,
    protocol_lists_pruned,
    protocol_sets,
)
from hetcomp_dist.evaluation.faiss_exact import BlockedFlatIndex
from hetcomp_dist.evaluation.retrieval import PAD, PrunedIndex


# ------------------------------------------------------------------------------ the reference
def brute_force(
    run: str, user_emb: np.ndarray, item_emb: np.ndarray, metric: str, ks=(10, 50), block: int = 512
) -> dict:
    """Full float64 score rows (blocks of users), exclusion by -inf, sort, then a plain per-user loop."""
    m = load_manifest(run)
    splits = {s: load_split(run, s, m) for s in ("train", "valid", "test")}
    V = item_emb.astype(np.float64)
    kmax = max(ks)
    out = {}
    for split, other in (("valid", "test"), ("test", "valid")):
        sums = {f"{w}@{k}": 0.0 for k in ks for w in ("R", "N")}
        n_eval = 0
        for b0 in range(0, m["n_users"], block):
            U = user_emb[b0 : b0 + block].astype(np.float64)
            S = U @ V.T if metric == "ip" else -((U**2).sum(1)[:, None] - 2 * U @ V.T + (V**2).sum(1)[None])
            for r in range(len(U)):
                u = b0 + r
                gt = set(splits[split].row(u).tolist())
                if not gt or not len(splits[other].row(u)):
                    continue
                n_eval += 1
                row = S[r].copy()
                row[splits["train"].row(u)] = -np.inf
                row[splits[other].row(u)] = -np.inf
                part = np.argpartition(-row, kmax)[:kmax]
                ranked = part[np.argsort(-row[part], kind="stable")]
                for k in ks:
                    top = [i for i in ranked[:k] if np.isfinite(row[i])]
                    hits = [1.0 if i in gt else 0.0 for i in top]
                    sums[f"R@{k}"] += sum(hits) / len(gt)
                    dcg = sum(h / math.log2(t + 2) for t, h in enumerate(hits))
                    idcg = sum(1 / math.log2(t + 2) for t in range(min(len(gt), k)))
                    sums[f"N@{k}"] += dcg / idcg
        out[split] = {key: v / n_eval for key, v in sums.items()}
    return out


def assert_close(got: dict, ref: dict, tol: float = 1e-6) -> None:
    for split in ref:
        for key in ref[split]:
            assert abs(got[split][key] - ref[split][key]) <= tol, (
                split,
                key,
                got[split][key],
                ref[split][key],
            )


def random_emb(run: str, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    m = load_manifest(run)
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(m["n_users"], dim)).astype(np.float32),
        rng.normal(size=(m["n_items"], dim)).astype(np.float32),
    )


# ---------------------------------------------------------------------------------------- tests
def test_protocol_lists_hand_example():
    # one user, candidates best first: 5 4 3 2 1 0; train {4}, valid {2}, test {3}
    cand = np.array([[5, 4, 3, 2, 1, 0]], np.int32)
    one = lambda *xs: CSR(np.array([0, len(xs)]), np.array(xs, np.int32))  # noqa: E731
    got = protocol_lists(cand, one(4), one(2), one(3), 3, 6)
    assert got["valid"].tolist() == [[5, 2, 1]]  # excludes train and test
    assert got["test"].tolist() == [[5, 3, 1]]  # excludes train and valid
    assert protocol_lists(cand, one(4), one(2), one(3), 5, 6, ("test",))["test"].tolist() == [
        [5, 3, 1, 0, PAD]
    ]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_equals_brute_force(synth_run, metric):
    U, V = random_emb(synth_run, seed=1)
    ref = brute_force(synth_run, U, V, metric)
    got = evaluate_embeddings(synth_run, U, V, metric, EvalConfig(batch_size=50))
    assert_close(got, ref)
    assert ref["test"]["R@50"] > 0  # the reference is not trivially zero


def test_learned_signal_brute_force(synth_run):
    """Embeddings with real signal (truncated SVD of train), so hits are many: still equal."""
    m = load_manifest(synth_run)
    tr = load_split(synth_run, "train", m)
    X = np.zeros((m["n_users"], m["n_items"]))
    X[tr.user_ids(), tr.items] = 1
    u, s, vt = np.linalg.svd(X, full_matrices=False)
    U, V = (u[:, :8] * s[:8]).astype(np.float32), vt[:8].T.astype(np.float32)
    ref = brute_force(synth_run, U, V, "ip")
    assert ref["test"]["R@50"] > 0.1
    assert_close(evaluate_embeddings(synth_run, U, V, "ip"), ref)


def test_scorer_path_equals_faiss_path(synth_run):
    U, V = random_emb(synth_run, seed=2)
    Ut, Vt = torch.from_numpy(U), torch.from_numpy(V)
    by_scores = evaluate_scorer(
        synth_run, lambda users: Ut[torch.from_numpy(users)] @ Vt.T, EvalConfig(batch_size=64)
    )
    assert_close(by_scores, evaluate_embeddings(synth_run, U, V, "ip"))
    assert_close(by_scores, brute_force(synth_run, U, V, "ip"))


@pytest.mark.parametrize("index, seed", [("pruned", 7), ("blocked", 10)])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_indexes_equal_brute_force(synth_run, metric, index, seed):
    """EvalConfig.index = "pruned" / "blocked": random embeddings, and (ip) embeddings with signal
    (many hits)."""
    U, V = random_emb(synth_run, seed=seed)
    cfg = EvalConfig(index=index, batch_size=50)
    assert_close(evaluate_embeddings(synth_run, U, V, metric, cfg), brute_force(synth_run, U, V, metric))
    if metric == "ip":
        m = load_manifest(synth_run)
        tr = load_split(synth_run, "train", m)
        X = np.zeros((m["n_users"], m["n_items"]))
        X[tr.user_ids(), tr.items] = 1
        u, s, vt = np.linalg.svd(X, full_matrices=False)
        U, V = (u[:, :8] * s[:8]).astype(np.float32), vt[:8].T.astype(np.float32)
        ref = brute_force(synth_run, U, V, "ip")
        assert ref["test"]["R@50"] > 0.1
        assert_close(evaluate_embeddings(synth_run, U, V, "ip", cfg), ref)
        assert_close(evaluate_embeddings(synth_run, U, V, "ip", cfg, splits=("test",)), {"test": ref["test"]})


def tie_case(rng, B: int = 40, n_items: int = 60, d: int = 3):
    """Integer vectors (many exact ties) and disjoint train/valid/test per user, the first 3 users heavy."""
    U, V = (
        rng.integers(-2, 3, (B, d)).astype(np.float32),
        rng.integers(-2, 3, (n_items, d)).astype(np.float32),
    )
    parts = {"train": [], "valid": [], "test": []}
    for b in range(B):
        chosen = rng.permutation(n_items)[: int(rng.integers(3, n_items - 2 if b < 3 else 30))]
        cut = np.sort(rng.choice(np.arange(1, len(chosen)), 2, replace=False))
        for name, items in zip(parts, np.split(chosen, cut)):
            parts[name].append(items)
    csr = {
        name: CSR(
            np.concatenate([[0], np.cumsum([len(x) for x in rows])]).astype(np.int64),
            np.concatenate(rows).astype(np.int32),
        )
        for name, rows in parts.items()
    }
    return U, V, parts, csr


def assert_lists_equal_a_per_user_loop(got: dict, U, V, parts, metric: str, k: int) -> None:
    """Each protocol's lists equal a float64 brute-force argsort (stable: ties by smaller id) per user."""
    S = (
        U.astype(np.float64) @ V.T.astype(np.float64)
        if metric == "ip"
        else -((U[:, None].astype(np.float64) - V[None].astype(np.float64)) ** 2).sum(-1)
    )
    for split in got:
        other = "test" if split == "valid" else "valid"
        for b in range(len(U)):
            row = S[b].copy()
            row[parts["train"][b]] = -np.inf
            row[parts[other][b]] = -np.inf
            ref = [i for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])][:k]
            assert got[split][b].tolist() == ref + [PAD] * (k - len(ref)), (split, b, k)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_protocol_lists_pruned_equals_a_per_user_loop(metric):
    """Integer vectors (many exact ties: smaller id first), heavy users, k above what is left."""
    U, V, parts, csr = tie_case(np.random.default_rng(8))
    for k in (5, 50):
        got = protocol_lists_pruned(
            PrunedIndex(V, metric, block=8, user_chunk=16), U, csr["train"], csr["valid"], csr["test"], k
        )
        assert set(got) == {"valid", "test"}
        assert_lists_equal_a_per_user_loop(got, U, V, parts, metric, k)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_protocol_lists_blocked_equals_a_per_user_loop(metric):
    """The same for FAISS over norm-sorted blocks, both protocols and each alone (its own exclusion)."""
    U, V, parts, csr = tie_case(np.random.default_rng(9))
    index = BlockedFlatIndex(V, metric, first_block=8, block=5)
    for k in (5, 50):
        for splits in (("valid", "test"), ("valid",), ("test",)):
            got = protocol_lists_blocked(index, U, csr["train"], csr["valid"], csr["test"], k, splits)
            assert tuple(got) == splits
            assert_lists_equal_a_per_user_loop(got, U, V, parts, metric, k)


def test_protocol_sets_hand_example():
    # two users; train {1, 2} / {}, valid {3} / {0}, test {4} / {5, 6}
    def csr(rows):
        return CSR(
            np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64),
            np.array([i for r in rows for i in r], np.int32),
        )

    train, valid, test = csr([[1, 2], []]), csr([[3], [0]]), csr([[4], [5, 6]])
    off, items, bits, masks = protocol_sets(train, valid, test)
    assert off.tolist() == [0, 4, 7]
    assert list(zip(items.tolist(), bits.tolist())) == [
        (1, 1),
        (2, 1),
        (3, 2),
        (4, 4),
        (0, 2),
        (5, 4),
        (6, 4),
    ]
    assert masks.tolist() == [1 | 4, 1 | 2]  # valid drops train and test; test drops train and valid
    off, items, bits, masks = protocol_sets(train, valid, test, ("valid",))  # valid items are not needed
    assert off.tolist() == [0, 3, 5] and items.tolist() == [1, 2, 4, 5, 6] and masks.tolist() == [5]


def test_pruned_distributed_equals_in_process(synth_run, ray_session):
    U, V = random_emb(synth_run, seed=9)
    cfg = EvalConfig(index="pruned")
    assert_close(
        evaluate_embeddings(synth_run, U, V, "ip", cfg, distributed=True),
        evaluate_embeddings(synth_run, U, V, "ip", distributed=False),
        1e-12,
    )
    assert_close(
        evaluate_embeddings(synth_run, U, V, "ip", EvalConfig(index="blocked"), distributed=True),
        evaluate_embeddings(synth_run, U, V, "ip", distributed=False),
        1e-12,
    )


def test_user_ranges_merge_to_the_whole(synth_run):
    U, V = random_emb(synth_run, seed=3)
    whole = evaluate_embeddings(synth_run, U, V)
    a = evaluate_embeddings(synth_run, U, V, users=(0, 150))  # crosses the shard boundary at 128
    b = evaluate_embeddings(synth_run, U, V, users=(150, 400))
    for split in ("valid", "test"):
        sa, sb = a["sums"][split], b["sums"][split]
        for key, v in whole[split].items():
            assert abs((sa[key] + sb[key]) / (sa["count"] + sb["count"]) - v) < 1e-12
    assert "sums" not in whole


def test_saved_topk_lists_reproduce_the_metrics(synth_run, tmp_path):
    U, V = random_emb(synth_run, seed=4)
    out = str(tmp_path / "topk")
    got = evaluate_embeddings(synth_run, U, V, save_topk=out)
    m = load_manifest(synth_run)
    assert storage.read_manifest(out)["k"] == 50
    t = storage.read_table(storage.shard_path(storage.join(out, "test"), 1))
    assert t.column("user").to_pylist() == list(range(128, 256))
    lists = t.column("items").to_pylist()
    train, valid = load_split(synth_run, "train", m), load_split(synth_run, "valid", m)
    for r, items in enumerate(lists):
        u = 128 + r
        assert not set(items) & set(train.row(u).tolist()) and not set(items) & set(valid.row(u).tolist())
    assert_close(evaluate_lists(synth_run, out), got, 1e-12)


def test_distributed_equals_in_process(synth_run, ray_session):
    U, V = random_emb(synth_run, seed=5)
    local = evaluate_embeddings(synth_run, U, V, "l2", distributed=False)
    remote = evaluate_embeddings(synth_run, U, V, "l2", distributed=True)
    assert_close(remote, local, 1e-12)
    Ut, Vt = torch.from_numpy(U), torch.from_numpy(V)
    remote_scorer = evaluate_scorer(
        synth_run, lambda users: -(torch.cdist(Ut[torch.from_numpy(users)], Vt) ** 2), distributed=True
    )
    assert_close(remote_scorer, local, 1e-5)  # cdist rounds differently from FAISS; same lists up to ties


def test_a_ranker_of_topk_queries_evaluates_like_the_embeddings(synth_run):
    """`evaluate_topk`: one exclusion-aware top-k query per protocol, the one-search path's metrics."""
    from hetcomp_dist.evaluation.evaluate import evaluate_topk
    from hetcomp_dist.evaluation.retrieval import build_index, search_excluding

    U, V = random_emb(synth_run, seed=6)
    index = build_index(V, "ip")
    calls = []

    def topk(users, k, ex_offsets, ex_values):
        calls.append(len(users))
        return search_excluding(index, U[users], k, ex_offsets, ex_values)

    got = evaluate_topk(synth_run, topk, EvalConfig(batch_size=100))
    assert_close(got, evaluate_embeddings(synth_run, U, V, "ip"), 1e-12)
    assert max(calls) <= 100 and len(calls) % 2 == 0  # two protocols per batch
    with pytest.raises(InputError, match="unknown split"):
        evaluate_topk(synth_run, topk, splits=("train",))


def test_a_saved_ranking_refills_its_short_rows_from_the_ranker(synth_run, tmp_path):
    """`evaluate_ranking` over each user's saved top-50 outside train (a teacher state): a user whose
    held-out items sit in that list leaves fewer than 50 for the other protocol; with `refill` those rows
    are ranked again with the protocol's set excluded, and the metrics are the exact ranker's own."""
    from hetcomp_dist.evaluation.evaluate import evaluate_ranking
    from hetcomp_dist.evaluation.retrieval import build_index, search_excluding

    U, V = random_emb(synth_run, seed=7)
    index = build_index(V, "ip")
    m = load_manifest(synth_run)
    train = load_split(synth_run, "train", m)
    folder = str(tmp_path / "state")
    storage.ensure_folder(folder)
    for s, lo, hi in storage.iter_shards(folder, m["n_users"], m["shard_size"]):
        ex = train.rows(lo - train.lo, hi - train.lo)
        top = search_excluding(index, U[lo:hi], 50, ex.offsets, ex.items)
        items = storage.dense_to_list(top)
        storage.write_table_atomic(storage.shard_path(folder, s), storage.user_table(lo, hi, items=items))
    refilled = []

    def topk(users, k, ex_offsets, ex_values):
        refilled.append(len(users))
        return search_excluding(index, U[users], k, ex_offsets, ex_values)

    exact = evaluate_embeddings(synth_run, U, V, "ip")
    got = evaluate_ranking(synth_run, folder, refill=(topk, 50))
    assert_close(got, exact, 1e-12)
    assert 0 < sum(refilled) < 2 * m["n_users"]  # some rows of the two protocols, far from all
    short = evaluate_ranking(synth_run, folder)  # no ranker at hand: those rows stay short
    assert short["valid"]["R@50"] < exact["valid"]["R@50"] or short["test"]["R@50"] < exact["test"]["R@50"]


def test_shape_mismatch_is_a_clear_error(synth_run):
    U, V = random_emb(synth_run)
    with pytest.raises(InputError, match="does not match the run"):
        evaluate_embeddings(synth_run, U[:-1], V)
    with pytest.raises(InputError, match="does not match the run"):
        evaluate_embeddings(synth_run, U, V[:, None])
    with pytest.raises(InputError, match="user dim"):
        evaluate_embeddings(synth_run, U, V[:, :4])
    with pytest.raises(InputError, match="NaN"):
        evaluate_embeddings(synth_run, U, np.full_like(V, np.nan))


def test_cli_json_and_errors(synth_run, tmp_path, capsys):
    U, V = random_emb(synth_run, seed=6)
    path = tmp_path / "emb.npz"
    np.savez(path, user=U, item=V)
    assert (
        cli.main(["evaluate", "--run", synth_run, "--embeddings", str(path), "--metric", "l2", "--json"]) == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"valid", "test"} and set(got["test"]) == {"R@10", "N@10", "R@50", "N@50"}
    assert_close(got, brute_force(synth_run, U, V, "l2"))
    np.savez(tmp_path / "short.npz", user=U[:10], item=V)
    assert cli.main(["evaluate", "--run", synth_run, "--embeddings", str(tmp_path / "short.npz")]) == 2
    assert "does not match the run" in capsys.readouterr().err
    np.savez(tmp_path / "noitem.npz", user=U)
    assert cli.main(["evaluate", "--run", synth_run, "--embeddings", str(tmp_path / "noitem.npz")]) == 2
    assert cli.main(["evaluate", "--run", synth_run, "--embeddings", str(tmp_path / "missing.npz")]) == 2


def test_citeulike_cli_equals_brute_force(citeulike_path, tmp_path, capsys):
    """Acceptance: `evaluate --json` on a random dimension-6 embedding of the CiteULike run."""
    run = str(tmp_path / "cu")
    assert cli.main(["ingest", "--input", str(citeulike_path), "--format", "citeulike", "--out", run]) == 0
    m = load_manifest(run)
    assert (m["n_users"], m["n_interactions"]) == (5219, 125580)
    U, V = random_emb(run, dim=6, seed=11)
    np.savez(tmp_path / "emb.npz", user=U, item=V)
    capsys.readouterr()
    assert cli.main(["evaluate", "--run", run, "--embeddings", str(tmp_path / "emb.npz"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert_close(got, brute_force(run, U, V, "ip"))
