"""`scredge serve --ray` as a process: it starts a local Ray cluster, serves through Ray's
proxy, and on SIGTERM drains every replica (an in-flight stream finishes, a longer one is
cut at the grace with a final error event), deletes the application, shuts the cluster
down and ends by the signal, leaving none of the processes it started. Oracles: the SSE
events each client received, the exit status, and the process table (every Ray process
names its temp folder, RAY_TMPDIR, on its command line)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from serving import MODEL, ServerProcess, check_drained, endless_and_short

pytestmark = pytest.mark.slow  # a local Ray cluster started and stopped: about a minute
pytest.importorskip("ray.serve", reason="needs the ray extra")


def _processes_naming(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in line:
            found.append(line[:160])
    return found


def test_sigterm_drains_replicas_and_leaves_no_ray_process(served_folder, engine):
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths live here
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    server = ServerProcess([str(served_folder), "--ray", "--replicas", "2", "--replica-cpus",
                            "0.5", "--port", "0", "--shutdown-grace", "3", "--model-name",
                            MODEL, "--backend", "ort"], env=env)
    proc = server.proc
    try:
        port = server.wait_ready(240)
        assert _processes_naming(tmp)  # the cluster runs, and names its folder
        endless, short, threads = endless_and_short(
            f"http://127.0.0.1:{port}/v1/completions", 60)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert proc.wait(120) in (0, -signal.SIGTERM)
    finally:
        server.kill()
    check_drained(engine, endless, short)
    deadline = time.monotonic() + 60  # workers notice their raylet is gone within seconds
    while _processes_naming(tmp):
        assert time.monotonic() < deadline, _processes_naming(tmp)
        time.sleep(1)
    shutil.rmtree(tmp, ignore_errors=True)
