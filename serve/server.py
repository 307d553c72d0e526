"""Running the app under uvicorn: `serve` (the CLI's, in the foreground, until a signal)
and `ServerThread` (in a background thread on a free port: tests, benchmarks, embedding).

Graceful shutdown: the first SIGINT/SIGTERM stops the listener and starts the
scheduler's drain (in-flight requests get `shutdown_grace_s` to finish, then are cut with
a final error event); uvicorn then waits for the open responses, and the app's lifespan
stops the scheduler. A second signal exits at once (uvicorn's behaviour).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.limits import MAX_REQUEST_BODY_BYTES
from scredge.serve.app import ServerConfig, create_app

log = logging.getLogger("scredge.serve")
SHUTDOWN_BACKSTOP_S = 10.0  # past the grace, uvicorn itself closes what is still open


def _uvicorn_server(app, config: ServerConfig, log_level: str):
    uvicorn = require("uvicorn")

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.scheduler.drain(config.shutdown_grace_s)
            super().handle_exit(sig, frame)

    ucfg = uvicorn.Config(app, log_level=log_level, lifespan="on",
                          timeout_graceful_shutdown=int(config.shutdown_grace_s
                                                        + SHUTDOWN_BACKSTOP_S))
    return Server(ucfg)


def listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ScredgeError("cannot listen on the address", received=f"{host}:{port} ({exc})",
                           expected="a free port on a local address",
                           fix="pick another --port, or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def load_engine(folder: str | Path, backend: str = "auto", device: str = "auto",
                threads: int | None = None):
    from scredge.runtime import Engine

    return Engine.load(folder, backend=backend, device=device, threads=threads)


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
          max_batch: int = 16, max_queue: int = 64, timeout_s: float = 600.0,
          max_context: int | None = None, shutdown_grace_s: float = 30.0,
          model_name: str | None = None, backend: str = "auto", device: str = "auto",
          speculative: str | None = None, speculative_k: int = 4,
          max_body_bytes: int = MAX_REQUEST_BODY_BYTES) -> int:
    """Serve `folder` until SIGINT/SIGTERM. After the graceful shutdown uvicorn re-raises
    the signal, so the process ends as that signal says (the usual for a service)."""
    require("starlette")
    require("uvicorn")
    config = ServerConfig(model_name or Path(folder).resolve().name, max_batch, max_queue,
                          timeout_s, max_context, shutdown_grace_s, speculative, speculative_k,
                          max_body_bytes)  # its limits checked before the engine loads
    engine = load_engine(folder, backend, device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(engine, config)
    sock = listen_socket(host, port)
    log.info("listening on http://%s:%d/v1 (model '%s')", host, sock.getsockname()[1],
             config.model_name)
    try:
        _uvicorn_server(app, config, "info").run(sockets=[sock])
    finally:
        sock.close()
        engine.close()
    return 0


class ServerThread:
    """The app served on `host:port` (0: a free port) in a background thread.

        with ServerThread(engine, ServerConfig("tiny")) as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="none")
    """

    def __init__(self, engine, config: ServerConfig, host: str = "127.0.0.1",
                 port: int = 0, log_level: str = "warning") -> None:
        self.app = create_app(engine, config)
        self.server = _uvicorn_server(self.app, config, log_level)
        self._sock = listen_socket(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self.server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="scredge-serve")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def scheduler(self):
        return self.app.state.scheduler

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self._thread.start()
        done = threading.Event()
        while not self.server.started and self._thread.is_alive():
            done.wait(0.02)
            timeout_s -= 0.02
            if timeout_s <= 0:
                raise ScredgeError("the server did not start in time")
        if not self.server.started:
            raise ScredgeError("the server failed to start", fix="see its log")
        return self

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """As SIGINT would: drain, then stop."""
        if self._thread.is_alive():
            self.server.handle_exit(signal.SIGINT, None)
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
