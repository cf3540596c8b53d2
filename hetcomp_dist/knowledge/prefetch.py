"""A software prefetch for the compiled kernels: start loading the next user's lists early.

A user's teacher lists are a few rows of 200-400 bytes spread over the (users, M, S, K) block, a
different state per teacher, which the hardware prefetchers do not predict: every row costs a DRAM
round trip. Requesting the next user's rows while the current user is computed hides that latency.
numba has no prefetch builtin, so this emits LLVM's ``llvm.prefetch`` (a hint: no fault, no effect
on results) through numba's public intrinsic API.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LINE_INTS = 16  # int32 per 64-byte cache line


@intrinsic
def _prefetch(typingctx, arr, i, j, k, r):
    """Prefetches the cache line of arr[i, j, k, r] (4-d array) for reading, into all cache levels."""
    sig = types.void(arr, i, j, k, r)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], signature.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # (address, read = 0, locality = 3: keep in every level, data cache = 1)
        builder.call(
            fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        )
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, inline="always")
def prefetch_row(lists, b, x, s, width):
    """Prefetches lists[b, x, s, :width] of a (B, M, S, L) array (any strides along the first 3 axes)."""
    for r in range(0, width, LINE_INTS):
        _prefetch(lists, b, x, s, r)
