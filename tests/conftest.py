"""Shared fixtures: one Ray instance for the whole session, small synthetic runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

REPO = Path(__file__).resolve().parents[1]
CITEULIKE = REPO.parent / "shared" / "data" / "citeulike" / "users.dat"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs Ray (ray.init costs ~5 s here)."""
    import ray

    if not ray.is_initialized():
        # CPUs are scheduling tokens: 4 lets 2 Train workers and Ray Data tasks coexist on 2 cores.
        ray.init(
            num_cpus=4,
            object_store_memory=512 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    # left running for the rest of the session; pytest's exit shuts it down


@pytest.fixture
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core box OpenMP spin-waits make 2 threads many times slower.

    Not autouse: the torch-heavy test modules request it with
    ``pytestmark = pytest.mark.usefixtures("_one_torch_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def citeulike_path() -> Path:
    if not CITEULIKE.exists():
        pytest.skip(f"CiteULike data not found at {CITEULIKE} (see README: Datasets)")
    return CITEULIKE


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory) -> str:
    """A tiny synthetic run: 400 users x 300 items, 4 shards of 128 users (RUN path, data committed)."""
    from hetcomp_dist.config import DataConfig, SynthConfig
    from hetcomp_dist.data.synth import synthesize

    run = str(tmp_path_factory.mktemp("synth_run"))
    synthesize(run, SynthConfig(users=400, items=300, seed=7), DataConfig(shard_size=128, seed=7))
    return run


BUCKET = "hetcomp-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and an environment that points at it; yields a boto3 client."""
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    from hetcomp_dist.testing.flaky_s3 import moto_environment

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    mp = pytest.MonkeyPatch()
    for k, v in moto_environment(f"http://127.0.0.1:{port}").items():
        mp.setenv(k, v)
    mp.delenv("AWS_PROFILE", raising=False)
    mp.delenv("AWS_SESSION_TOKEN", raising=False)
    client = boto3.client("s3")  # endpoint and credentials from the environment, like pyarrow's
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        mp.undo()
        server.stop()
