"""The paper's split (METHOD.md §1 steps 2-3): proportions, drop rules, determinism, shard writing."""

from __future__ import annotations

import numpy as np
import pytest

from hetcomp_dist import storage
from hetcomp_dist.data.dataset import CSR, load_manifest, load_split
from hetcomp_dist.data.split import SplitWriter, concat_rows, drop_unseen, pair_keys, split_users
from hetcomp_dist.layout import RunLayout


def random_lists(n_users: int, n_items: int, seed: int, lo: int = 0) -> CSR:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 40, n_users)
    rows = [np.sort(rng.choice(n_items, size=n, replace=False)) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return CSR(offsets, np.concatenate(rows).astype(np.int32), lo)


def reference_split(user: int, items: list[int], seed: int) -> tuple[set, set, set]:
    """Plain per-user version of step 2: order by the pair hash, floor(0.2 n) test, next valid."""
    keys = pair_keys(seed, np.full(len(items), user), np.array(items))
    shuffled = [it for _, it in sorted(zip(keys.tolist(), items))]
    n_t = int(np.floor(0.2 * len(items)))
    return set(shuffled[n_t + n_t :]), set(shuffled[n_t : 2 * n_t]), set(shuffled[:n_t])


def test_proportions_and_partition():
    rows = random_lists(300, 500, seed=1)
    train, valid, test = split_users(rows, seed=3)
    for r in range(rows.n):
        n = len(rows.row(r))
        tr, va, te = set(train.row(r).tolist()), set(valid.row(r).tolist()), set(test.row(r).tolist())
        assert len(te) == len(va) == n // 5  # floor(0.2 n)
        assert len(tr) == n - 2 * (n // 5)
        assert tr | va | te == set(rows.row(r).tolist()) and not (tr & va or tr & te or va & te)
        assert list(train.row(r)) == sorted(tr)  # lists are stored ascending
    five = CSR(np.array([0, 5]), np.arange(5, dtype=np.int32))
    tr, va, te = split_users(five, 0)
    assert (len(tr.items), len(va.items), len(te.items)) == (3, 1, 1)  # the paper's 5-item user


def test_matches_a_plain_per_user_reference():
    rows = random_lists(50, 200, seed=2, lo=1000)
    train, valid, test = split_users(rows, seed=11)
    for r in range(rows.n):
        u = rows.lo + r
        ref = reference_split(u, rows.row(u).tolist(), 11)
        assert (set(train.row(u).tolist()), set(valid.row(u).tolist()), set(test.row(u).tolist())) == ref


def test_split_is_per_user_and_deterministic():
    rows = random_lists(200, 400, seed=4)
    whole = split_users(rows, seed=5)
    again = split_users(rows, seed=5)
    # any blocking of the users gives the same lists (shard-parallel == in-process)
    pieces = [split_users(rows.rows(a, b), seed=5) for a, b in ((0, 7), (7, 120), (120, 200))]
    for k in range(3):
        glued = concat_rows([p[k] for p in pieces])
        np.testing.assert_array_equal(glued.offsets, whole[k].offsets)
        np.testing.assert_array_equal(glued.items, whole[k].items)
        np.testing.assert_array_equal(again[k].items, whole[k].items)
    # the input order of a user's items does not matter
    shuffled_items = rows.items.copy()
    rng = np.random.default_rng(0)
    for r in range(rows.n):
        a, b = rows.offsets[r], rows.offsets[r + 1]
        shuffled_items[a:b] = rng.permutation(shuffled_items[a:b])
    other = split_users(CSR(rows.offsets, shuffled_items), seed=5)
    np.testing.assert_array_equal(other[2].items, whole[2].items)
    # another seed gives another split
    assert not np.array_equal(split_users(rows, seed=6)[2].items, whole[2].items)


def test_drop_unseen_hand_example():
    # users 0..3; items 0..5; items 4 and 5 never occur in train
    valid = CSR(np.array([0, 2, 3, 4, 5]), np.array([1, 4, 5, 2, 3], np.int32))
    test = CSR(np.array([0, 1, 2, 4, 4]), np.array([2, 3, 1, 5], np.int32))
    in_train = np.array([1, 1, 1, 1, 0, 0], bool)
    v, t = drop_unseen(valid, test, in_train)
    # user 0: valid {1} (4 dropped), test {2}: kept
    # user 1: valid {5} -> empty: dropped from both, its test {3} goes too
    # user 2: valid {2}, test {1, 5} -> {1}: kept
    # user 3: test already empty: dropped from both
    assert [v.row(u).tolist() for u in range(4)] == [[1], [], [2], []]
    assert [t.row(u).tolist() for u in range(4)] == [[2], [], [1], []]


def write_with(tmp, name, rows: CSR, n_items, shard_size, blocks) -> str:
    run = str(tmp / name)
    w = SplitWriter(RunLayout(run), rows.n, n_items, shard_size, seed=9)
    for a, b in blocks:
        w.add(rows.rows(a, b))
    counts = w.finish()
    storage.write_manifest(
        RunLayout(run).data,
        {
            "n_users": rows.n,
            "n_items": n_items,
            "shard_size": shard_size,
            "config_hash": "x",
            "n_train": counts.n_train,
            "n_valid": counts.n_valid,
            "n_test": counts.n_test,
            "n_eval_users": counts.n_eval_users,
            "n_interactions": counts.n_interactions,
        },
    )
    return run


def test_writer_shards_and_global_drop_rule(tmp_path):
    # a long-tail catalogue so that some valid/test items never reach any train list
    rng = np.random.default_rng(7)
    n_users, n_items = 230, 2000
    lengths = rng.integers(5, 12, n_users)
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    lists = [np.sort(rng.choice(n_items, size=n, replace=False, p=p)) for n in lengths]
    rows = CSR(np.concatenate([[0], np.cumsum(lengths)]), np.concatenate(lists).astype(np.int32))
    run_a = write_with(tmp_path, "a", rows, n_items, 64, [(0, 230)])
    run_b = write_with(tmp_path, "b", rows, n_items, 64, [(0, 1), (1, 100), (100, 101), (101, 230)])
    for split in ("train", "valid", "test"):
        files = storage.list_files(RunLayout(run_a).split(split))
        assert [f.rsplit("/", 1)[1] for f in files] == [storage.shard_name(s) for s in range(4)]
        a, b = load_split(run_a, split), load_split(run_b, split)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.items, b.items)
    # reference for step 3 with plain sets over the whole dataset
    ref = [reference_split(u, lists[u].tolist(), 9) for u in range(n_users)]
    in_train = set().union(*(r[0] for r in ref))
    train, valid, test = (load_split(run_a, s) for s in ("train", "valid", "test"))
    n_eval = 0
    dropped_any = False
    for u, (tr, va, te) in enumerate(ref):
        va2, te2 = va & in_train, te & in_train
        dropped_any |= va2 != va or te2 != te
        if not va2 or not te2:
            va2, te2 = set(), set()
        n_eval += bool(va2)
        assert set(train.row(u).tolist()) == tr
        assert set(valid.row(u).tolist()) == va2 and set(test.row(u).tolist()) == te2
    assert dropped_any  # the case is exercised
    m = load_manifest(run_a)
    assert m["n_eval_users"] == n_eval and m["n_train"] == len(train.items)
    assert m["n_valid"] == len(valid.items) and m["n_interactions"] == len(rows.items)


def test_writer_rejects_out_of_order_blocks(tmp_path):
    rows = random_lists(10, 50, seed=0)
    w = SplitWriter(RunLayout(str(tmp_path / "d")), 10, 50, 4, seed=0)
    w.add(rows.rows(0, 3))
    with pytest.raises(ValueError, match="in order"):
        w.add(rows.rows(4, 10))
    w.close()
