"""Fault drills: the smoke pipeline once undisturbed and once under each injected fault; after each,
the report's rows must equal the undisturbed run's, RUN must hold no temporary files and no process of
the run may be left. Prints one JSON line; exits 0 when every fault was survived with nothing left.

    python jobs/drill_faults.py                                  # every fault: 11 min on 2 quiet cores
    python jobs/drill_faults.py --faults write_local,teacher_train
    python jobs/drill_faults.py --baseline runs/smoke            # reuse an undisturbed smoke RUN
    python jobs/drill_faults.py --faults write_local teachers.names=[mf,ml]   # overrides for every run

Each run is ``python jobs/pipeline.py --smoke --run RUN [overrides]`` in a session of its own with a
local Ray of its own; the drill signals only that session's processes. Each fault gets a fresh RUN
holding copies of the undisturbed run's stages before the one it disturbs:

  teacher_train       SIGKILL of a teacher actor mid-training (its pid from Ray's state API, the moment
                      from RUN: a checkpoint, no export yet); the actor restarts (max_restarts) and
                      resumes from its checkpoint.
  teacher_export      the same while the actor exports its trajectory (a state=1 shard, no manifest);
                      the restarted actor redoes the export, not the training.
  knowledge_task      SIGKILL of the worker running a round-0 Ray Data task (knowledge rounds forced
                      onto Ray Data with knowledge.distributed_min_users=1); Ray Data retries it.
  train_worker_step   SIGKILL of Train rank 1 before step 2 of epoch 3 (testing.faults.KillOnce through
                      the pipeline's TrainHooks); the worker group restarts from the epoch-2 checkpoint.
  train_worker_dkc    SIGKILL of Train rank 0 as it starts building DKC round 1; the group restarts.
  driver_teachers     SIGKILL of the driver while teachers train, then the same command again: it
                      resumes the interrupted teachers from their checkpoints.
  driver_student      SIGKILL of the driver after the student's epoch-2 Ray Train checkpoint, while
                      rank 0 holds epoch 3 (testing.faults.Stall: epochs take milliseconds here), then
                      the same command again: Ray Train resumes the training from that checkpoint.
  write_local         knowledge round 0's shard 1 fails half-way through its write (a patched
                      pyarrow.parquet.write_table in the driver): the run fails, leaves no temporary
                      file, and a rerun succeeds.
  s3_500              the whole pipeline on s3:// (moto's server on loopback) answering 500 to every
                      7th PUT: the S3 client retries (or the run fails cleanly and a rerun succeeds).
  corrupt_checkpoint  the driver killed while a teacher trains, its work/ckpt.pt overwritten with random
                      bytes, then a rerun: the teacher reports the file and trains from scratch.

Rows: teachers, the ensemble and knowledge are deterministic here (seeded, one process each) and must
match bit for bit. So did the DDP student (2 gloo ranks on CPU) in two undisturbed smoke runs, so
``--student-atol`` defaults to 0; raise it where a platform's DDP reductions are not reproducible.

The JSON line: faults_tried, faults_survived, rows_equal (every fault's rows equal the undisturbed
run's), leftovers (temporary files, consumed DKC inputs, orphaned Ray Train checkpoints, processes left
after a run ended), and per fault: survived, rows_equal, max_abs_diff, rc, checks, details, errors.
"""

import argparse
import json
import os
import sys

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # a checkout without pip install


def main(argv: list[str] | None = None) -> int:
    from hetcomp_dist.testing.drill_faults import FAULTS, run_drills

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", help=f"comma-separated subset of {','.join(FAULTS)} (default: all)")
    p.add_argument(
        "--baseline",
        metavar="RUN",
        help="an undisturbed smoke RUN with the same overrides (default: run one)",
    )
    p.add_argument(
        "--work",
        metavar="DIR",
        help="the drill's runs and logs (default: a new /tmp/hcdrill-*, kept on failure)",
    )
    p.add_argument("--keep", action="store_true", help="keep the default work folder even when all passed")
    p.add_argument("--student-atol", type=float, default=0.0, help="allowed difference of student metrics")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one pipeline run may take")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",")] if args.faults else list(FAULTS)
    summary = run_drills(
        faults,
        args.overrides,
        baseline=os.path.abspath(args.baseline) if args.baseline else None,
        work=args.work,
        keep=args.keep,
        student_atol=args.student_atol,
        timeout_s=args.timeout,
    )
    print(json.dumps(summary), flush=True)
    ok = (
        summary["faults_survived"] == summary["faults_tried"]
        and summary["rows_equal"]
        and not summary["leftovers"]
    )
    return 0 if ok and not summary["baseline"]["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
