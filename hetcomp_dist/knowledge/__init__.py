"""Knowledge construction (METHOD.md §3): ensemble g, P+, the discrepancy D@K and DKC rounds.

The math lives in `ensemble`, `discrepancy` and `dkc`: numpy-in, numpy-out functions over batches
of users, each running a compiled (numba) per-user kernel; `rounds` reads and writes the sharded
``RUN/knowledge`` stage (through `shard_io`), in-process or as a Ray Data map over user shards.
"""
