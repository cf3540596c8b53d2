"""Open-addressing hash table for the compiled per-user ensemble kernels (`ensemble`).

A user's lists touch at most M * L distinct items, so each kernel thread keeps one small table --
item ids as keys, -1 = empty, linear probing, values 0 when empty -- and clears exactly the slots
it used before the next user. Its size follows the user's entries, not the catalogue: it stays
cache-resident for ten million items as for ten thousand (a per-item score array would not). Keys
are item ids >= 0 (int32): callers skip PADs (-1).

`add_dense` is the other layout, for catalogues whose size is known and bounded: the scores in an
array indexed by item id (8 bytes per item per thread), no hashing and no probing. The kernels pick
it when the caller gives n_items: an indexed add is cheaper than a hashed insert.
The kernels spell the choice (hash, dense, or an id past the dense table) out at each of their
three call sites: numba compiles the same choice made in one shared inline helper into a much slower
dense path.
"""

from __future__ import annotations

import numba
import numpy as np

EMPTY = -1
_GOLDEN = 2654435769  # 2^32 / phi: Fibonacci hashing spreads consecutive ids over the table


@numba.njit(cache=True)
def table_bits(entries, spread):
    """log2 of a table size >= spread * entries (load factor <= 1/spread), at least 4."""
    bits = 4
    while (1 << bits) < spread * entries:
        bits += 1
    return bits


@numba.njit(cache=True, inline="always")
def slot(item, bits):
    """Home slot of `item` (0 <= item < 2^31) in a table of 2^bits slots: the top bits of item * golden."""
    return ((item * _GOLDEN) & 0xFFFFFFFF) >> (32 - bits)


@numba.njit(cache=True, inline="always")
def add(keys, vals, used, n_used, bits, item, val):
    """vals[item] += val (inserting item when new); returns the new count of used slots.

    used[:n_used] lists the slots taken so far, in insertion order (for the scan and the clear).
    Empty slots hold value 0, so a new item and a known one take the same path -- no branch on
    which it is (unpredictable when a user's lists overlap); only a home slot taken by another
    item walks the probe sequence.
    """
    h = slot(item, bits)
    k = keys[h]
    if k != item and k != EMPTY:
        mask = (1 << bits) - 1
        while k != item and k != EMPTY:
            h = (h + 1) & mask
            k = keys[h]
    keys[h] = item
    vals[h] += val
    used[n_used] = h
    return n_used + (k != item)


@numba.njit(cache=True, inline="always")
def add_dense(vals, used, n_used, item, val):
    """The dense variant of `add`: vals is indexed by item id (0 <= item < len(vals), all 0 between
    users). A new item also gets 1 rounding unit, so a present item never reads 0 (a 0-weight term
    included); `select_top` takes it off again. used[:n_used] lists the items in insertion order."""
    old = vals[item]
    new = old == 0
    vals[item] = old + val + new
    used[np.uintp(n_used)] = item  # unsigned indices (item too, from the caller): no negative-index fix-up
    return n_used + new


@numba.njit(cache=True, inline="always")
def clear(keys, vals, used, n_used):
    """Empties the used slots, values back to 0 (the table is as new for the next user)."""
    for j in range(n_used):
        keys[used[j]] = EMPTY
        vals[used[j]] = 0
