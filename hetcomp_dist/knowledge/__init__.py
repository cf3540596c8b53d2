"""Knowledge construction (METHOD.md §3): ensemble g, P+, the discrepancy D@K and DKC rounds.

Pure vectorised math lives in `ensemble`, `discrepancy` and `dkc`; `rounds` reads and writes the
sharded ``RUN/knowledge`` stage, in-process or as a Ray Data map over user shards.
"""
