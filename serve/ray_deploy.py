"""The OpenAI server as a Ray Serve deployment: the same app (`create_app`) on each
replica, each replica with its own engine (the artifact loaded once) and its own batching
core; Ray only routes HTTP requests to replicas and starts, replaces and scales them.

    from scredge.serve import ray_app
    app = ray_app("artifacts/tiny", replicas=2)      # a bound Ray Serve application
    ray.serve.run(app, route_prefix="/")             # or `serve run` with a YAML file

Needs the `ray` extra (`ray[serve]`), imported only when a deployment is built.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.limits import MAX_REQUEST_BODY_BYTES
from scredge.serve.app import ServerConfig, create_app, sse_event
from scredge.serve.protocol import ApiError
from scredge.serve.server import SHUTDOWN_BACKSTOP_S, load_engine

# Requests a replica takes past its rows and queue: those still being parsed or tokenized
# and those whose answer is being written. With them, a request past the queue reaches the
# replica and gets the scheduler's own 429, instead of waiting in Ray's proxy.
INGRESS_HEADROOM = 8
DRAIN_POLL_S = 0.5  # how often Ray checks that a stopping replica has no requests left


@dataclass(frozen=True)
class RayScale:
    """How many replicas and what each one holds: a fixed count, or autoscaling between
    `autoscale` = (min, max) on the requests each replica has; `num_cpus` / `num_gpus`
    are Ray resources per replica (one GPU each: `num_gpus=1`)."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.autoscale is None and (isinstance(self.replicas, bool)
                                       or not isinstance(self.replicas, int)
                                       or self.replicas < 1):
            raise ScredgeError("invalid --replicas", received=repr(self.replicas),
                               expected="a whole number >= 1",
                               fix="pass --replicas 1 or more (or --autoscale MIN:MAX)")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if lo < 0 or hi < 1 or lo > hi:
                raise ScredgeError("invalid --autoscale", received=f"{lo}:{hi}",
                                   expected="MIN:MAX with 0 <= MIN <= MAX and MAX >= 1",
                                   fix="e.g. --autoscale 1:4")
        if not (self.num_cpus >= 0 and self.num_gpus >= 0):
            raise ScredgeError("invalid Ray resources per replica",
                               received=f"num_cpus {self.num_cpus}, num_gpus {self.num_gpus}",
                               expected="numbers >= 0")

    @property
    def threads(self) -> int:
        """onnxruntime threads per replica: its CPUs, so replicas do not oversubscribe."""
        return max(1, int(self.num_cpus))


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX); the range itself is checked by RayScale."""
    lo, sep, hi = text.partition(":")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ScredgeError("invalid --autoscale", received=repr(text),
                           expected="MIN:MAX, two whole numbers", fix="e.g. --autoscale 1:4")
    return int(lo), int(hi)


def max_ongoing_requests(config: ServerConfig) -> int:
    """What Ray may send one replica at once: its batch rows, its queue, and the headroom.
    Ray's default (5) would keep a replica's batch below 5 rows: the batcher starves."""
    return config.max_batch + config.max_queue + INGRESS_HEADROOM


def deployment_options(config: ServerConfig, scale: RayScale) -> dict:
    """The Ray Serve deployment options for this server config and scale.

    Autoscaling aims at a full batch per replica (`target_ongoing_requests` = max_batch).
    A stopping replica gets the server's grace plus the backstop before Ray kills it (the
    grace itself is the scheduler's drain; see `ScredgeReplica.drain`)."""
    options = {
        "max_ongoing_requests": max_ongoing_requests(config),
        "graceful_shutdown_timeout_s": config.shutdown_grace_s + SHUTDOWN_BACKSTOP_S,
        "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
        "ray_actor_options": {"num_cpus": scale.num_cpus, "num_gpus": scale.num_gpus},
    }
    if scale.autoscale is None:
        options["num_replicas"] = scale.replicas
    else:
        lo, hi = scale.autoscale
        options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi,
                                         "initial_replicas": max(lo, 1),
                                         "target_ongoing_requests": config.max_batch}
    return options


class ScredgeReplica:
    """One replica: the engine, loaded once, and the app over it (its lifespan starts the
    scheduler thread when Ray starts the replica, and stops it when Ray stops it)."""

    def __init__(self, folder: str, config: ServerConfig, backend: str, device: str,
                 threads: int) -> None:
        self.engine = load_engine(folder, backend, device, threads)
        self.server_app = create_app(self.engine, config)
        self.stall_s = config.stall_s

    def __serve_build_asgi_app__(self):  # Ray Serve's late-bound ingress: after __init__
        return self.server_app

    def drain(self, grace_s: float) -> int:
        """As SIGTERM does to `scredge serve`: refuse new requests, let the ones in flight
        finish for `grace_s` seconds, then cut each with a final error event. Returns the
        requests in flight."""
        scheduler = self.server_app.state.scheduler
        scheduler.drain(grace_s)
        return scheduler.running + scheduler.queued

    def stats(self) -> dict:
        """This replica's scheduler counters (through `handle.broadcast("stats")`)."""
        s = self.server_app.state.scheduler
        return {"steps": s.steps, "peak_batch": s.peak_batch, "running": s.running,
                "queued": s.queued}

    def check_health(self) -> None:
        """Ray's periodic health check: a scheduler that died, or that has work and makes
        no progress, fails it and Ray replaces this replica."""
        problem = self.server_app.state.scheduler.stalled(self.stall_s)
        if problem is not None and not self.server_app.state.scheduler.draining:
            raise RuntimeError(problem)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def ray_app(folder: str | Path, *, replicas: int = 1, autoscale: tuple[int, int] | None = None,
            num_cpus: float = 1.0, num_gpus: float = 0.0, max_batch: int = 16,
            max_queue: int = 64, timeout_s: float = 600.0, max_context: int | None = None,
            shutdown_grace_s: float = 30.0, model_name: str | None = None,
            backend: str = "auto", device: str = "auto", speculative: str | None = None,
            speculative_k: int = 4, max_body_bytes: int = MAX_REQUEST_BODY_BYTES):
    """The server for `folder` as a bound Ray Serve application (`serve.run(app)`, or an
    `import_path` of `serve run`). The folder is checked here, on the caller's machine;
    every node that runs a replica must see it at the same absolute path."""
    scale = RayScale(replicas, autoscale, num_cpus, num_gpus)
    folder = Path(folder).absolute()
    check_folder(folder)
    if speculative not in (None, "ngram"):  # a draft folder: replicas run elsewhere
        speculative = str(Path(speculative).absolute())
    config = ServerConfig(model_name or folder.name, max_batch, max_queue, timeout_s,
                          max_context, shutdown_grace_s, speculative, speculative_k,
                          max_body_bytes)  # its limits checked
    serve = require("ray.serve")
    deployment = serve.deployment(serve.ingress()(ScredgeReplica), name="ScredgeReplica")
    return deployment.options(**deployment_options(config, scale)).bind(
        str(folder), config, backend, device, scale.threads)


def check_folder(folder: Path) -> None:
    """The folder as every command checks it (manifest, hashes, config), before any
    replica starts: a bad folder is one clear error, not replicas failing in a loop."""
    from scredge.artifact import read_config, verify_manifest

    read_config(folder, verify_manifest(folder))


class CutStreamGuard:
    """ASGI middleware for Ray's HTTP proxy: a stream whose replica died mid-answer ends
    with a final `data: {"error": ...}` event and `data: [DONE]`, as a stream the server
    cuts does, instead of a connection closed mid-body (which no client tells from a
    network fault); an answer that never started gets OpenAI's 503 JSON."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "ended": False, "sse": False}

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                headers = dict(message.get("headers") or [])
                state["sse"] = headers.get(b"content-type", b"").startswith(
                    b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["ended"] = True
            await send(message)

        await self.app(scope, receive, watch)
        if not state["ended"]:  # Ray's proxy returns so when the replica died
            with contextlib.suppress(OSError, RuntimeError):  # the client may be gone too
                await _finish(send, state["started"], state["sse"])


def proxy_middlewares() -> list:
    """The middlewares of Ray Serve's HTTP proxy (named by the proxy callback variable,
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): the stream guard."""
    from starlette.middleware import Middleware

    return [Middleware(CutStreamGuard)]


REPLICA_LOST = ApiError(503, "the replica serving this request stopped before it finished; "
                             "retry", "server_error", code="replica_unavailable")


async def _finish(send, started: bool, sse: bool) -> None:
    if not started:
        body = json.dumps(REPLICA_LOST.body()).encode()
        await send({"type": "http.response.start", "status": REPLICA_LOST.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    tail = (sse_event(REPLICA_LOST.body()) + b"data: [DONE]\n\n") if sse else b""
    await send({"type": "http.response.body", "body": tail})
