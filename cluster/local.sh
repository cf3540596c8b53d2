#!/usr/bin/env bash
# bash cluster/local.sh --smoke --out runs/smoke      (any jobs/pipeline.py options: --config FILE, --out RUN, key=value ...)
#
# Local mode through the real job path: a private Ray head on 127.0.0.1 (own ports and temp dir), a blocking
# `ray job submit --working-dir . -- python jobs/pipeline.py ...`, then only that cluster is stopped.
# Exit status = the job's (0 SUCCEEDED, 1 FAILED). See hetcomp_dist/local_cluster.py.
# Relative paths are taken from where you run it; the job ships this repository as its working dir.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
exec env PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python -m hetcomp_dist.local_cluster "$@"
