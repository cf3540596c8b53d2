"""One writer per RUN: a lease, ``RUN/_lease.json``, held while an invocation writes the RUN.

Every library entry point that writes a RUN holds a `RunLease` on it (`pipeline.run_pipeline`,
`data.ingest.ingest`, `data.synth.synthesize`, `teachers.actors.train_teachers`,
`knowledge.rounds.build_round0`, `student.trainer.train_student`, `serving.recommend.recommend`,
`serving.bundle.export_bundle`, and the ``knowledge`` command around `knowledge.rounds.dkc_round`):

- before anything is written it writes the lease {host, pid, token, started, heartbeat}; an
  invocation that finds a live lease fails at once with an `InputError` ("RUN is in use by HOST pid N
  since T") and writes nothing;
- a thread rewrites the heartbeat every ``pipeline.lease_heartbeat_s`` seconds; a lease whose holder
  is gone -- on this host with a pid that no longer runs, or without a heartbeat for
  ``pipeline.lease_timeout_s`` -- is taken over, with a log line;
- on exit the lease is removed, only while it still carries the holder's token;
- it is re-entrant within a process: `run_pipeline` holds it and the stage functions it calls take
  it again as a no-op. The processes a stage starts (teacher actors, Train workers, Ray tasks) take
  none: their driver holds it for them.

On a local filesystem a free lease is taken with an atomic create-if-absent (a hard link). Object
storage offers none through pyarrow, so there the new holder writes its lease, waits `SETTLE_S`,
reads it back and goes on only when the token is its own. That is best-effort against two
invocations started within that window of each other: usually one of them is refused, rarely both
go on. Taking over a stale lease works the same way on every filesystem.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from hetcomp_dist import storage
from hetcomp_dist.config import PipelineConfig
from hetcomp_dist.errors import InputError
from hetcomp_dist.layout import RunLayout
from hetcomp_dist.progress import log

STAGE = "lease"
SETTLE_S = 0.5  # object storage: how long a new holder waits before reading its lease back
_TRIES = 3

_held: dict[str, list[int]] = {}  # RUN -> [pid, depth] of the leases this process holds
_held_lock = threading.Lock()


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLease:
    """Holds the lease of RUN for the length of a ``with`` block (see the module doc).

    Args:
        run: the RUN (local path or URI).
        pipeline: the heartbeat period and the staleness timeout (``lease_heartbeat_s``,
            ``lease_timeout_s``); None = the defaults.

    Raises:
        InputError: on entry, when a live lease of another invocation exists.
    """

    def __init__(self, run: str, pipeline: PipelineConfig | None = None) -> None:
        p = pipeline or PipelineConfig()
        self.run = run.rstrip("/")
        self.path = RunLayout(self.run).lease
        self.heartbeat_s, self.timeout_s = p.lease_heartbeat_s, p.lease_timeout_s
        self.token = ""
        self._record: dict[str, Any] = {}
        self._nested = False
        self._made_run = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------- enter / exit
    def __enter__(self) -> RunLease:
        # the lock covers the whole acquisition: a second thread must see the first one's lease as ours
        with _held_lock:
            held = _held.get(self.run)
            if held is not None and held[0] == os.getpid():
                held[1] += 1
                self._nested = True
                return self
            self._acquire()
            _held[self.run] = [os.getpid(), 1]
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.run}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with _held_lock:
            _held[self.run][1] -= 1
            if self._nested:
                return
            del _held[self.run]
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.read()
        if current is not None and current.get("token") == self.token:
            storage.delete_file(self.path)
        if self._made_run:
            storage.delete_empty_dir(self.run)

    # ---------------------------------------------------------------------------------- the file
    def read(self) -> dict | None:
        """The lease on storage: None when there is none, {} when it is unreadable."""
        try:
            if not storage.exists(self.path):
                return None
            data = json.loads(storage.read_bytes(self.path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _acquire(self) -> None:
        self._made_run = not storage.exists(self.run)
        for _ in range(_TRIES):
            current = self.read()
            if current is not None:
                why = self._gone(current)
                if why is None:
                    raise self._in_use(current)
                log(
                    STAGE,
                    f"{self.run}: taking over the lease of {current.get('host')} pid {current.get('pid')} "
                    f"(since {_utc(float(current.get('started', 0)))}): {why}",
                )
            self.token = secrets.token_hex(16)
            now = time.time()
            self._record = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "started": now,
                "heartbeat": now,
                "heartbeat_s": self.heartbeat_s,
            }
            if self._write(create=current is None):
                return
        raise InputError(self.path, "could not take the lease: other invocations kept taking it", "retry")

    def _write(self, create: bool) -> bool:
        """Writes our lease; True when it is ours afterwards."""
        if create and not storage.is_uri(self.path):
            return self._create_local()
        storage.write_json_atomic(self.path, self._record)
        time.sleep(SETTLE_S)
        back = self.read()
        return back is not None and back.get("token") == self.token

    def _create_local(self) -> bool:
        """Local create-if-absent: a complete file under a temporary name, hard-linked to the lease's."""
        path = storage.resolve(self.path)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{self.token}.tmp"
        with open(tmp, "w") as f:
            json.dump(self._record, f)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def _gone(self, lease: dict) -> str | None:
        """Why the holder of `lease` is gone, or None while it is alive."""
        if not lease:
            return "the lease file is unreadable"
        host, pid = lease.get("host"), lease.get("pid")
        if host == socket.gethostname() and isinstance(pid, int):
            if pid == os.getpid():
                return "left behind by this process"
            if not pid_alive(pid):
                return f"process {pid} is gone"
        age = time.time() - float(lease.get("heartbeat", 0))
        if age > self.timeout_s:
            return f"no heartbeat for {age:.0f}s (pipeline.lease_timeout_s={self.timeout_s:g})"
        return None

    def _in_use(self, lease: dict) -> InputError:
        age = time.time() - float(lease.get("heartbeat", 0))
        return InputError(
            self.run,
            f"RUN is in use by {lease.get('host')} pid {lease.get('pid')} since "
            f"{_utc(float(lease.get('started', 0)))} (last heartbeat {age:.0f}s ago)",
            "wait until it ends; a lease whose holder is gone is taken over "
            f"{self.timeout_s:g}s after its last heartbeat (pipeline.lease_timeout_s)",
        )

    def _beat(self) -> None:
        """Rewrites the heartbeat until exit, or until the lease turns out to be someone else's."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.read()
                if current is None or current.get("token") != self.token:
                    holder = "nobody" if not current else f"{current.get('host')} pid {current.get('pid')}"
                    log(STAGE, f"{self.run}: the lease is now held by {holder}; heartbeats stopped")
                    return
                self._record["heartbeat"] = time.time()
                storage.write_json_atomic(self.path, self._record)
            except (OSError, ValueError) as e:  # a storage hiccup: the next beat tries again
                log(STAGE, f"{self.run}: heartbeat failed ({type(e).__name__}: {e}); retrying")
