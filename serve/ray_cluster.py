"""`scredge serve --ray`: start a local Ray cluster (or join one), deploy `ray_app` on it,
and serve until SIGINT/SIGTERM; then drain every replica (the scheduler's drain, as
`scredge serve` does), delete the application, and shut down what this process started:
Serve's actors when it started Serve, the whole local cluster when it started one.

A second signal skips the grace: Ray is shut down at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.serve.ray_deploy import RayScale, ray_app
from scredge.serve.server import SHUTDOWN_BACKSTOP_S, listen_socket

log = logging.getLogger("scredge.serve")
ADDRESS_CONNECT_S = 5.0  # a --ray-address that does not answer this fast is refused
SERVE_NAMESPACE, SERVE_CONTROLLER = "serve", "SERVE_CONTROLLER_ACTOR"  # Ray Serve's names
# Ray Serve's HTTP proxy calls the function this variable names for its ASGI middlewares
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "scredge.serve.ray_deploy:proxy_middlewares"


def serve_on_ray(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
                 scale: RayScale | None = None, ray_address: str | None = None,
                 shutdown_grace_s: float = 30.0, **server) -> int:
    """Serve `folder` on Ray Serve replicas until SIGINT/SIGTERM; `server`: the keyword
    arguments of `ray_app` (max_batch, max_queue, timeout_s, model_name, ...)."""
    ray = require("ray")
    serve = require("ray.serve")
    scale = scale or RayScale()
    app = ray_app(folder, replicas=scale.replicas, autoscale=scale.autoscale,
                  num_cpus=scale.num_cpus, num_gpus=scale.num_gpus,
                  shutdown_grace_s=shutdown_grace_s, **server)  # folder and limits checked
    if ray_address is not None:
        check_reachable(ray_address)
    else:  # the proxy binds here: a taken port is our clear error, not a Ray hang
        sock = listen_socket(host, port)
        port = sock.getsockname()[1]  # --port 0: a free port, handed to Ray's proxy
        sock.close()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = _on_signals()
    started_ray = _init_ray(ray, ray_address)
    started_serve = False
    name = "scredge-" + (server.get("model_name") or Path(folder).absolute().name)
    try:
        stop.install()  # again: ray.init installs its own SIGTERM handler in the driver
        started_serve = not _serve_running(ray)
        if ray_address is None:
            check_resources(ray, scale)
        _deploy(serve, app, name, host, port)
        log.info("listening on http://%s:%d/v1 (Ray Serve application '%s', %s)", host, port,
                 name, _scale_text(scale))
        stop.wait()
        log.info("draining every replica (grace %.0f s)", shutdown_grace_s)
        _drain(serve, name, shutdown_grace_s)
    except KeyboardInterrupt:  # a second signal: no grace, shut down now
        if stop.signum is None:
            raise
    finally:
        _shut_down(ray, serve, name, started_serve, started_ray)
    stop.reraise()
    return 0


def check_reachable(address: str) -> None:
    """A --ray-address must answer a TCP connection within ADDRESS_CONNECT_S ('auto' is
    Ray's own lookup of a cluster on this machine)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ScredgeError("invalid --ray-address", received=repr(address),
                           expected="HOST:PORT (the head's GCS, e.g. 10.0.0.1:6379), "
                                    "ray://HOST:PORT, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), ADDRESS_CONNECT_S).close()
    except OSError as exc:
        raise ScredgeError("cannot reach the Ray cluster", received=f"{address} ({exc})",
                           expected="a running Ray head at that address",
                           fix="start one with `ray start --head` there, check the address "
                               "and firewall, or drop --ray-address to start a local "
                               "cluster") from None


def _init_ray(ray, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local one; True when this process
    started it (and so shuts it down)."""
    if ray.is_initialized():  # embedded in a program that already called ray.init
        return False
    try:
        if address is None:
            # the proxy of a cluster we start guards its streams (a joined cluster's
            # operator sets this variable on its nodes: docs/ray-serve.md)
            os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
            ray.init(include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ScredgeError("cannot start or join the Ray cluster",
                           received=f"{address or 'a local cluster'}: {exc}"[:400],
                           fix="check --ray-address (`ray status` there)") from None
    return address is None


def check_resources(ray, scale: RayScale) -> None:
    """On a local cluster (no autoscaler adds nodes) the replicas must fit its CPUs and
    GPUs, else Ray would wait for them forever."""
    count = scale.replicas if scale.autoscale is None else max(scale.autoscale[0], 1)
    have = ray.cluster_resources()
    for what, each in (("CPU", scale.num_cpus), ("GPU", scale.num_gpus)):
        if count * each > have.get(what, 0) + 1e-9:
            raise ScredgeError(f"the replicas need more {what}s than this machine's Ray "
                               "cluster has", received=f"{count} x {each:g} {what}",
                               expected=f"at most {have.get(what, 0):g} {what}s in all",
                               fix=f"lower --replica-{what.lower()}s (fractions are "
                                   "allowed) or the number of replicas")


def _serve_running(ray) -> bool:
    return any(a.get("name") == SERVE_CONTROLLER and a.get("namespace") == SERVE_NAMESPACE
               for a in ray.util.list_named_actors(all_namespaces=True))


def _deploy(serve, app, name: str, host: str, port: int) -> None:
    # Serve's HTTP proxy listens here, unless Serve already runs on a joined cluster
    # (then Ray keeps its options and says so)
    serve.start(http_options={"host": host, "port": port})
    if name in serve.status().applications:
        raise ScredgeError("the Ray cluster already runs an application of this name",
                           received=name, fix="stop it (`serve delete " + name + "`) first")
    try:
        serve.run(app, name=name, route_prefix="/", blocking=False)
    except RuntimeError as exc:  # a replica that cannot start: Ray gives up after retries
        raise ScredgeError("the Ray Serve deployment failed to start",
                           received=str(exc).strip().splitlines()[-1][:400],
                           fix="see the replica's log above") from None


def _drain(serve, name: str, grace_s: float) -> None:
    """Every replica drains (new requests 503, in-flight ones get `grace_s`, then are cut
    with an error event); deleting the application then waits for them (Ray gives each
    replica the grace plus the backstop) and stops the replicas."""
    handle = serve.get_app_handle(name)
    in_flight = handle.broadcast("drain", grace_s).results(timeout_s=SHUTDOWN_BACKSTOP_S,
                                                          return_exceptions=True)
    log.info("replicas draining: %s requests in flight",
             [n if isinstance(n, int) else "lost" for n in in_flight])
    serve.delete(name)


def _shut_down(ray, serve, name: str, started_serve: bool, started_ray: bool) -> None:
    if not ray.is_initialized():
        return
    if started_ray:  # everything this process started goes with the cluster
        ray.shutdown()
        return
    try:
        if started_serve:
            serve.shutdown()
        elif name in serve.status().applications:
            serve.delete(name)
    finally:
        ray.shutdown()  # disconnects this driver; the joined cluster stays up


class _Signals:
    """SIGINT/SIGTERM set `stop`; a second one raises KeyboardInterrupt (skip the grace)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(0.5):  # a timeout, so the handler runs promptly
            pass

    def reraise(self) -> None:
        """End as the signal says, as `scredge serve` (uvicorn) does."""
        if self.signum is not None:
            signal.signal(self.signum, signal.SIG_DFL)
            os.kill(os.getpid(), self.signum)


def _on_signals() -> _Signals:
    signals = _Signals()
    signals.install()
    return signals


def _scale_text(scale: RayScale) -> str:
    count = (f"{scale.replicas} replicas" if scale.autoscale is None
             else f"autoscaling {scale.autoscale[0]}-{scale.autoscale[1]} replicas")
    return f"{count}, {scale.num_cpus:g} CPU / {scale.num_gpus:g} GPU each"
