"""`scredge serve` as a process: SIGTERM drains (an in-flight request finishes, a longer
one is cut at the grace with a final error event), the listener closes, and the process
ends (uvicorn re-raises the signal after its shutdown); each request's timing was logged.
Oracle: the SSE events each client received, the exit status and the log lines."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from serving import MODEL, ServerProcess, check_drained, endless_and_short


def test_sigterm_finishes_in_flight_then_cuts_and_exits(served_folder, engine):
    server = ServerProcess([str(served_folder), "--port", "0", "--shutdown-grace", "3",
                            "--model-name", MODEL, "--backend", "ort"])
    proc, log = server.proc, server.log
    try:
        port = server.wait_ready(120)
        endless, short, threads = endless_and_short(
            f"http://127.0.0.1:{port}/v1/completions", 30)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # the listener is closed
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        for t in threads:
            t.join(60)
        # uvicorn re-raises the signal once it has shut down gracefully: the parent sees it
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        server.kill()
    check_drained(engine, endless, short)
    server.reader.join(10)
    timing = [line for line in log if "completion " in line and "ttft" in line]
    assert len(timing) == 2 and any("cut: the server is shutting down" in t for t in timing)
