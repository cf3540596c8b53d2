"""Bring your own teacher: rankings made elsewhere, imported as a teacher of a RUN in the trained teachers'
layout (``hetcomp-dist teachers import``), so that knowledge and students cannot tell the difference.

Input: one Parquet file per state E1..E4 (a local path or a URI) with the columns ``user`` (raw id) and
``items`` (list of raw item ids, best first), and optionally one of the observed order, same columns.
Every file is checked in full before anything is written; each problem is an InputError naming the
file and its first bad row (rows counted from 0):

- ids go through the run's maps (`data.idmap`): an unknown user or item id is refused, and a file in
  which most ids are unknown is reported as written for another run's maps (or with dense ids);
- a user appears once per file and an item once per list;
- every evaluated user (non-empty valid and test lists) is in every file. A user who is not evaluated
  may be absent: its state lists are empty (g ranks the other teachers' items for it; its D@K to an
  empty list is 1 in every state, so DKC sees rho = 1, as for a teacher whose states agree);
- the states hold top-K *unobserved* items like a trained teacher's: the user's train items are dropped
  from each state list, at least K = ``knowledge.topk`` items must remain (every unobserved item, for a
  user who has fewer than K in the catalogue), and the first K are kept.

The observed order (P+ is built from it) is, per user, the train items in the order of the observed
file's list, then the train items that list leaves out, most frequent in train first (ties: smaller
id); other items of the list are ignored. Without ``--observed`` the E4 file's list is that list (before
its train items are dropped), so a full ranking that keeps train items serves both purposes.

The manifest's hash covers the files (path, size, modification time), the data stage and K: importing
unchanged files again is skipped, a changed file is imported again. Memory: the five files' lists in
dense ids, O(users · K) each.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hetcomp_dist import storage
from hetcomp_dist.config import IMPORTED_TEACHER_NAME, TEACHER_NAMES, Config
from hetcomp_dist.data.dataset import CSR, load_manifest, load_split
from hetcomp_dist.data.idmap import IdMap, load_idmap
from hetcomp_dist.errors import InputError
from hetcomp_dist.evaluation.evaluate import evaluate_ranking
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log
from hetcomp_dist.teachers.trajectory import N_STATES

FORMAT = "a Parquet file with columns `user` (raw user id) and `items` (list of raw item ids, best first)"


def builtin_teachers() -> tuple[str, ...]:
    """The names of the teachers trained here: config's TEACHER_NAMES and every model registry family."""
    from hetcomp_dist.models.registry import TEACHERS

    return tuple(dict.fromkeys([*TEACHER_NAMES, *TEACHERS]))


def imported_manifest(run: str, name: str, data: dict, k: int = 0) -> dict:
    """The manifest of teacher `name` imported into RUN for its current data stage, with lists of at
    least `k` items; an InputError otherwise (a name that is neither built in nor imported included)."""
    layout = RunLayout(run)
    m = storage.read_manifest(layout.teacher(name))
    again = f"`hetcomp-dist teachers import --run RUN --name {name} --states U1,U2,U3,U4`"
    if m is None or not m.get("imported"):
        raise InputError(
            layout.teacher(name),
            f"teacher {name!r} is not a built-in teacher ({', '.join(builtin_teachers())}) "
            "and was not imported into this run",
            f"import it with {again}, or take it out of teachers.names",
        )
    if m.get("schema_version") != storage.SCHEMA_VERSION or m.get("data_hash") != data["config_hash"]:
        raise InputError(layout.teacher(name), "imported for another data stage", f"import it again: {again}")
    if m["K"] < k:
        raise InputError(
            layout.teacher(name),
            f"imported with K = {m['K']} < knowledge.topk = {k}",
            f"import it again with this config: {again}",
        )
    return m


# --------------------------------------------------------------------------------- reading a file
def _read(uri: str) -> pa.Table:
    if not storage.exists(uri):
        raise InputError(uri, "file not found", f"pass {FORMAT}")
    try:
        table = storage.read_table(uri)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(uri, f"not a readable Parquet file ({e})", f"pass {FORMAT}") from e
    missing = [c for c in ("user", "items") if c not in table.column_names]
    if missing:
        raise InputError(uri, f"no column {missing[0]!r} (columns: {', '.join(table.column_names)})", FORMAT)
    kind = table.schema.field("items").type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        raise InputError(uri, f"column 'items' is {kind}, not a list of item ids", FORMAT)
    if table.num_rows == 0:
        raise InputError(uri, "no rows", FORMAT)
    return table


def _dense(idmap: IdMap, raw: pa.Array, rows: np.ndarray, uri: str) -> np.ndarray:
    """Dense ids of `raw` (entries of file rows `rows`); unknown ids are an InputError."""
    kind = idmap.kind[:-1]
    try:
        dense = idmap.to_dense(raw)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(
            uri, f"{kind} ids of type {raw.type} do not convert to the run's raw ids ({idmap.type}): {e}"
        ) from e
    bad = dense < 0
    n_bad = int(bad.sum())
    if n_bad:
        first = int(np.argmax(bad))
        shown = raw[first].as_py()
        if 2 * n_bad > len(dense):
            raise InputError(
                uri,
                f"{n_bad:,} of {len(dense):,} {kind} ids are not in this run's id maps (row {rows[first]}: "
                f"{shown!r}): the file was written for another run's maps, or with dense ids",
                f"write the raw ids of this run (RUN/data/maps/{idmap.kind}.parquet, column raw)",
            )
        raise InputError(
            f"{uri}, row {rows[first]}",
            f"{kind} id {shown!r} is not in the run's id maps ({n_bad:,} unknown {kind} ids in the file)",
            f"every {kind} must be one of the run's (RUN/data/maps/{idmap.kind}.parquet)",
        )
    return dense


def _first_repeat(keys: np.ndarray) -> int:
    """Index of the first entry whose key occurred before, -1 when all are distinct."""
    _, first = np.unique(keys, return_index=True)
    if len(first) == len(keys):
        return -1
    repeat = np.ones(len(keys), bool)
    repeat[first] = False
    return int(np.argmax(repeat))


def read_ranking(uri: str, users: IdMap, items: IdMap, evaluated: np.ndarray) -> tuple[CSR, np.ndarray]:
    """One imported file in dense ids, checked (ids, repeats, every evaluated user present).

    Args:
        uri: the file.
        users, items: the run's id maps.
        evaluated: (n_users,) bool, the users that must be present.

    Returns:
        (lists: CSR over every dense user, best first, absent users empty; row: (n_users,) int64 the
        file row of each user, -1 when absent).
    """
    table = _read(uri)
    n_rows = table.num_rows
    user_raw = table.column("user").combine_chunks()
    col = table.column("items").combine_chunks()
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    item_raw = pc.list_flatten(col)
    row_of_entry = np.repeat(np.arange(n_rows), lengths)
    user = _dense(users, user_raw, np.arange(n_rows), uri)
    item = _dense(items, item_raw, row_of_entry, uri)
    r = _first_repeat(user)
    if r >= 0:
        earlier = int(np.nonzero(user == user[r])[0][0])
        raise InputError(f"{uri}, row {r}", f"user {user_raw[r].as_py()!r} is also in row {earlier}", FORMAT)
    e = _first_repeat(row_of_entry * items.n + item)
    if e >= 0:
        r = int(row_of_entry[e])
        raise InputError(
            f"{uri}, row {r}",
            f"item {item_raw[e].as_py()!r} appears twice in the list of user {user_raw[r].as_py()!r}",
            "list each item once",
        )
    row = np.full(users.n, -1, np.int64)
    row[user] = np.arange(n_rows)
    missing = np.nonzero(evaluated & (row < 0))[0]
    if len(missing):
        raise InputError(
            uri,
            f"{len(missing):,} evaluated user(s) missing (users with valid and test items), the first "
            f"{users.to_raw(missing[:1])[0].as_py()!r}",
            "every evaluated user needs a list (users who are not evaluated may be left out)",
        )
    by_user = CSR(np.concatenate([[0], np.cumsum(lengths)]), item.astype(np.int32)).take(np.argsort(user))
    counts = np.zeros(users.n, np.int64)
    counts[np.sort(user)] = by_user.lengths()
    offsets = np.zeros(users.n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return CSR(offsets, by_user.items), row


# ------------------------------------------------------------------------------- lists -> teacher
def _in_train(lists: CSR, train: CSR, n_items: int) -> np.ndarray:
    """(nnz,) bool: each entry of `lists` is in its user's train list (both over every user)."""
    keys = lists.user_ids() * n_items + lists.items
    return np.isin(keys, train.user_ids() * n_items + train.items)


def _keep(lists: CSR, keep: np.ndarray) -> CSR:
    """The entries of `lists` where `keep` (nnz,) is true, same users."""
    offsets = np.zeros(lists.n + 1, np.int64)
    np.cumsum(np.bincount(lists.user_ids()[keep], minlength=lists.n), out=offsets[1:])
    return CSR(offsets, lists.items[keep])


def unobserved_state(lists: CSR, row: np.ndarray, train: CSR, k: int, n_items: int, uri: str) -> CSR:
    """A state's lists without each user's train items, cut to k; a present user with fewer than k
    left is an InputError naming the first such row of the file."""
    out = _keep(lists, ~_in_train(lists, train, n_items))
    # a user with fewer than k unobserved items in the whole catalogue needs them all (as a trained
    # teacher's export holds them all, padded)
    need = np.minimum(k, n_items - train.lengths())
    short = np.nonzero((row >= 0) & (out.lengths() < need))[0]
    if len(short):
        u = short[np.argmin(row[short])]
        n, left = lists.lengths()[u], out.lengths()[u]
        raise InputError(
            f"{uri}, row {row[u]}",
            f"{left} items outside the user's train list ({n} listed, {n - left} of them train items); "
            f"a state needs at least K = knowledge.topk = {k} (or every unobserved item when fewer)",
            "export longer lists (or lower knowledge.topk)",
        )
    pos = np.arange(len(out.items)) - np.repeat(out.offsets[:-1], out.lengths())
    return _keep(out, pos < k)


def observed_order(ranked: CSR, train: CSR, n_items: int) -> CSR:
    """Each user's train items: those in `ranked` in its order, then the others by train frequency
    (more first, ties by smaller id). Both CSRs over every user."""
    freq = np.bincount(train.items, minlength=n_items)
    by_freq = np.empty(n_items, np.int64)
    by_freq[np.lexsort((np.arange(n_items), -freq))] = np.arange(n_items)
    keys = ranked.user_ids() * n_items + ranked.items
    pos = np.arange(len(keys)) - np.repeat(ranked.offsets[:-1], ranked.lengths())
    order = np.argsort(keys)
    t_users = train.user_ids()
    t_keys = t_users * n_items + train.items
    at = np.searchsorted(keys[order], t_keys)
    found = at < len(keys)
    found[found] = keys[order[at[found]]] == t_keys[found]
    rank = n_items + by_freq[train.items]  # after every listed item (a list position is < n_items)
    rank[found] = pos[order[at[found]]]
    return CSR(train.offsets, train.items[np.lexsort((rank, t_users))])


def _write(folder: str, lists: CSR, n_users: int, shard_size: int) -> None:
    for s, lo, hi in storage.iter_shards(folder, n_users, shard_size):
        part = lists.rows(lo, hi)
        storage.write_table_atomic(
            storage.shard_path(folder, s),
            storage.user_table(lo, hi, items=storage.csr_to_list(part.offsets, part.items)),
        )


def import_hash(cfg: Config, name: str, data_hash: str, sources: dict) -> str:
    """Config hash of an imported teacher: its files, the data, K and the metrics' cut-offs."""
    return storage.config_hash(
        "imported teacher", name, data_hash, sources, cfg.knowledge.topk, list(cfg.eval.ks)
    )


def check_name(name: str) -> None:
    """An InputError unless `name` can be an imported teacher's (safe, and no built-in teacher's)."""
    if not IMPORTED_TEACHER_NAME.fullmatch(name):
        raise InputError("--name", f"{name!r} is not a teacher name ({IMPORTED_TEACHER_NAME.pattern})")
    if name in builtin_teachers():
        raise InputError(
            "--name",
            f"{name!r} is a built-in teacher ({', '.join(builtin_teachers())})",
            "give the imported teacher a name of its own",
        )


def import_teacher(run: str, cfg: Config, name: str, states: list[str], observed: str | None = None) -> dict:
    """Imports teacher `name` into RUN from four state files (and an observed-order file); returns its
    committed manifest. Every check passes before anything is written (see the module docstring).

    Args:
        run: a run with a committed data stage.
        cfg: K is ``knowledge.topk``; the metrics' cut-offs ``eval.ks``.
        name: the teacher's name in ``teachers.names``.
        states: the URIs of E1..E4.
        observed: the URI of the observed order; None: the E4 file's order.
    """
    t0 = time.perf_counter()
    check_name(name)
    if len(states) != N_STATES:
        raise InputError("--states", f"{len(states)} files for {N_STATES} states", "pass U1,U2,U3,U4")
    data = load_manifest(run)
    layout = RunLayout(run)
    uris = {**{f"state={e + 1}": u for e, u in enumerate(states)}, "observed": observed}
    sources = {}
    for key, uri in uris.items():
        if uri is not None:
            if not storage.exists(uri):
                raise InputError(uri, "file not found", f"pass {FORMAT}")
            sources[key] = {"path": uri, **storage.fingerprint(uri)}
    h = import_hash(cfg, name, data["config_hash"], sources)
    done = storage.stage_is_done(layout.teacher(name), h)
    if done is not None:
        log(f"teacher {name}", f"{layout.teacher(name)} is up to date (import {h}); skipping")
        return done
    n_users, n_items, k = data["n_users"], data["n_items"], cfg.knowledge.topk
    users, items = load_idmap(run, "users", data), load_idmap(run, "items", data)
    train = load_split(run, "train", data)
    valid, test = load_split(run, "valid", data), load_split(run, "test", data)
    evaluated = (valid.lengths() > 0) & (test.lengths() > 0)
    lists, present = [], None
    for uri in states:
        ranked, row = read_ranking(uri, users, items, evaluated)
        lists.append(unobserved_state(ranked, row, train, k, n_items, uri))
        present = row >= 0 if present is None else present & (row >= 0)
    order_of = read_ranking(observed, users, items, evaluated)[0] if observed else ranked
    obs = observed_order(order_of, train, n_items)
    # every file passed its checks: write
    storage.begin_stage(layout.teacher(name))
    for e, state in enumerate(lists):
        _write(layout.teacher_state(name, e + 1), state, n_users, data["shard_size"])
    _write(layout.teacher_observed(name), obs, n_users, data["shard_size"])
    states_metrics = [
        {"state": e, **evaluate_ranking(run, layout.teacher_state(name, e), tuple(cfg.eval.ks))}
        for e in range(1, N_STATES + 1)
    ]
    wall = time.perf_counter() - t0
    metrics = {
        "teacher": name,
        "model": "imported",
        "imported": True,
        "sources": sources,
        "K": k,
        "states": states_metrics,
        "observed": "file" if observed else "E4 file",
        "users_without_lists": int(n_users - present.sum()),
        "wall_s": wall,
    }
    storage.write_json_atomic(layout.teacher_metrics(name), metrics)
    manifest = {
        "config_hash": h,
        "teacher": name,
        "model": "imported",
        "imported": True,
        "data_hash": data["config_hash"],
        "sources": sources,
        "K": k,
        "state_epochs": None,
        "convergence_epoch": None,
        "n_users": n_users,
        "n_items": n_items,
        "shard_size": data["shard_size"],
        "n_shards": storage.n_shards(n_users, data["shard_size"]),
        "valid": states_metrics[-1]["valid"],
        "test": states_metrics[-1]["test"],
        "wall_s": wall,
    }
    storage.write_manifest(layout.teacher(name), manifest)
    log(f"teacher {name}", f"imported into {layout.teacher(name)}: test R@50 {manifest['test']['R@50']:.4f}")
    return storage.read_manifest(layout.teacher(name))
