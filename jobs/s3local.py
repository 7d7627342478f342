"""moto's standalone S3 server for the benchmark jobs: a real S3 endpoint over HTTP on 127.0.0.1,
in a process of its own (so that a job's memory and CPU readings are the job's)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time


def serve_s3(port: int) -> None:
    """moto's standalone S3 server (a child process: its objects live in its memory)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    while True:
        time.sleep(3600)


def start_s3() -> multiprocessing.Process:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.get_context("spawn").Process(target=serve_s3, args=(port,))
    server.start()
    # Set before Ray starts: its workers inherit the endpoint and keys.
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.1)
    raise RuntimeError("moto's S3 server did not start")
