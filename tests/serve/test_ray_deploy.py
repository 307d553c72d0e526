"""serve/ray_deploy.py and the `--ray` options without a Ray cluster: the scale's and the
command line's refusals, the deployment options derived from the server's limits, the
bound application, and the proxy's stream guard on a stand-in ASGI app. Oracles: the
ScredgeError fields, the limits' definitions (batch rows + queue + headroom), and the
ASGI messages the guard sends."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import types

import pytest
from serving import MODEL

from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.serve import ServerConfig
from scredge.serve.ray_deploy import (
    INGRESS_HEADROOM,
    CutStreamGuard,
    RayScale,
    deployment_options,
    max_ongoing_requests,
    parse_autoscale,
)


@pytest.mark.parametrize("kwargs, needle", [
    ({"replicas": 0}, "invalid --replicas"),
    ({"replicas": -2}, "invalid --replicas"),
    ({"autoscale": (3, 1)}, "invalid --autoscale"),
    ({"autoscale": (0, 0)}, "invalid --autoscale"),
    ({"num_cpus": -1.0}, "invalid Ray resources"),
])
def test_scale_refusals(kwargs, needle):
    with pytest.raises(ScredgeError, match=needle):
        RayScale(**kwargs)


@pytest.mark.parametrize("text", ["3", "a:b", "1:", ":4", "1-4", "-1:2"])
def test_parse_autoscale_refuses(text):
    with pytest.raises(ScredgeError, match="invalid --autoscale"):
        parse_autoscale(text)


def test_options_follow_the_server_limits():
    """max_ongoing_requests holds a full batch, the queue and the headroom (Ray's default 5
    would cap the batch at 5 rows); autoscaling aims at a full batch per replica; a stopping
    replica gets the grace plus the backstop."""
    config = ServerConfig(MODEL, max_batch=16, max_queue=64, shutdown_grace_s=7)
    fixed = deployment_options(config, RayScale(replicas=3, num_cpus=0.5, num_gpus=1))
    assert fixed["max_ongoing_requests"] == max_ongoing_requests(config) == 16 + 64 + \
        INGRESS_HEADROOM
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1}
    assert fixed["graceful_shutdown_timeout_s"] > 7
    auto = deployment_options(config, RayScale(autoscale=parse_autoscale("0:4")))
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4,
                                          "initial_replicas": 1, "target_ongoing_requests": 16}
    assert RayScale(num_cpus=0.5).threads == 1 and RayScale(num_cpus=2).threads == 2


def test_ray_app_binds_without_a_cluster(served_folder):
    """The bound application carries the options; the folder is checked here, before any
    replica starts."""
    pytest.importorskip("ray.serve", reason="needs the ray extra")
    import ray

    from scredge.serve import ray_app

    app = ray_app(served_folder, replicas=2, num_cpus=0.5, max_batch=4, max_queue=2)
    deployment = app._bound_deployment
    assert deployment.num_replicas == 2
    assert deployment.max_ongoing_requests == 4 + 2 + INGRESS_HEADROOM
    assert deployment.ray_actor_options["num_cpus"] == 0.5
    assert not ray.is_initialized()
    with pytest.raises(ScredgeError, match="no manifest.json"):
        ray_app(served_folder.parent, replicas=1)
    with pytest.raises(ScredgeError, match="invalid serving limits"):
        ray_app(served_folder, max_batch=0)


@pytest.mark.parametrize("argv, needle", [
    (["--replicas", "2"], "only apply with --ray"),
    (["--ray-address", "auto"], "only apply with --ray"),
    (["--ray", "--replicas", "0"], "invalid --replicas"),
    (["--ray", "--autoscale", "3:1"], "invalid --autoscale"),
    (["--ray", "--autoscale", "x"], "invalid --autoscale"),
])
def test_cli_refusals(served_folder, argv, needle, capsys):
    assert main(["serve", str(served_folder), *argv]) == 2
    assert needle in capsys.readouterr().err


def test_cli_refuses_an_unreachable_address(served_folder, capsys):
    """A closed port on this machine: refused at once, no Ray started."""
    pytest.importorskip("ray.serve", reason="needs the ray extra")
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    assert main(["serve", str(served_folder), "--ray", "--ray-address",
                 f"127.0.0.1:{port}"]) == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err
    assert main(["serve", str(served_folder), "--ray", "--ray-address", "nohost"]) == 2
    assert "invalid --ray-address" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_cli_without_ray_names_the_extra(served_folder, capsys, monkeypatch):
    for name in ("ray", "ray.serve"):  # None in sys.modules: `import ray` fails
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["serve", str(served_folder), "--ray"]) == 2
    assert "pip install 'scredge[ray]'" in capsys.readouterr().err


def _guarded(messages: list[dict]) -> list[dict]:
    """What the client gets when the proxy's app sends `messages` then returns."""
    async def inner(scope, receive, send):
        for m in messages:
            await send(m)

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(CutStreamGuard(inner)({"type": "http"}, None, send))
    return sent


def test_guard_ends_a_cut_stream_with_an_error_event():
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]}
    piece = {"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True}
    sent = _guarded([start, piece])
    tail = sent[-1]["body"].decode()
    assert not sent[-1].get("more_body")
    events = [line[6:] for line in tail.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["error"]["code"] == "replica_unavailable"
    assert events[1] == "[DONE]"
    # an answer never started: OpenAI's JSON error, 503
    sent = _guarded([])
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"]["code"] == "replica_unavailable"
    # a complete answer passes untouched
    whole = [start, {"type": "http.response.body", "body": b"data: [DONE]\n\n"}]
    assert _guarded(whole) == whole


def test_a_local_cluster_must_fit_the_replicas():
    """Ray would wait forever for replicas a local cluster cannot hold: refused first."""
    from scredge.serve.ray_cluster import check_resources

    two_cpus = types.SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    check_resources(two_cpus, RayScale(replicas=4, num_cpus=0.5))
    with pytest.raises(ScredgeError, match="more CPUs"):
        check_resources(two_cpus, RayScale(replicas=3))
    with pytest.raises(ScredgeError, match="more GPUs"):
        check_resources(two_cpus, RayScale(num_gpus=1))
