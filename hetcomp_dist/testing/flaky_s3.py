"""An S3 server on loopback that answers 500 to every n-th PUT: moto's server app behind a small WSGI
layer, for the fault drills (clients must retry, or fail cleanly and succeed on a rerun).

Every PUT counts (PutObject, CopyObject -- pyarrow's rename --, UploadPart, the empty ``dir/`` markers
of create_dir); the n-th, 2n-th, ... get an S3 ``InternalError`` (HTTP 500), which the AWS SDK behind
pyarrow retries like any 5xx. Credentials and endpoint reach pyarrow only through `environment`, as
on a cluster node.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable

_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again. (injected by the fault drill)</Message>"
    b"</Error>"
)


def moto_environment(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point pyarrow (and boto3) at a moto server on `endpoint`, with no
    credentials or profile of the machine's leaking in."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance identity
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }


class FailEveryNthPut:
    """WSGI middleware: the n-th, 2n-th, ... PUT gets a 500 (its body is read first, so the connection
    stays usable for the client's retry); everything else goes to `app`."""

    def __init__(self, app: Callable, every: int) -> None:
        self.app, self.every = app, every
        self.puts = self.failed = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "PUT":
            with self._lock:
                self.puts += 1
                fail = self.every > 0 and self.puts % self.every == 0
                self.failed += fail
            if fail:
                from werkzeug.wrappers import Request

                Request(environ).get_data()  # drain the body
                start_response(
                    "500 Internal Server Error",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(_ERROR)))],
                )
                return [_ERROR]
        return self.app(environ, start_response)


class FlakyS3:
    """moto's S3 on 127.0.0.1 with `FailEveryNthPut`; a context manager.

    Args:
        every: every n-th PUT fails (0: none).
        bucket: created at start.
    """

    def __init__(self, every: int = 7, bucket: str = "hetcomp-drill") -> None:
        self.every, self.bucket = every, bucket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.layer: FailEveryNthPut | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point pyarrow (and boto3) at this server."""
        return moto_environment(self.endpoint)

    def client(self):
        import boto3

        env = self.environment()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def start(self) -> FlakyS3:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs) -> None:  # thousands of requests per run
                pass

        self.layer = FailEveryNthPut(DomainDispatcherApplication(create_backend_app), 0)
        self._server = make_server("127.0.0.1", self.port, self.layer, threaded=True, request_handler=Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.client().create_bucket(Bucket=self.bucket)
        self.layer.every = self.every  # the bucket exists before the failures start
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join()
            self._server = None

    def __enter__(self) -> FlakyS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
