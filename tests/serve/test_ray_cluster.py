"""The server on a local Ray cluster (2 CPUs, replicas of half a CPU): two replicas
answer 16 concurrent openai-client requests each exactly as `Engine.generate` alone; a
replica killed mid-load is replaced, and every stream it held ends with an error event,
none silently; a replica's own 429 past its queue comes through Ray's proxy. Oracles:
`Engine.generate` on each request alone, the SSE events each client received, Ray
Serve's own replica states, and each replica's scheduler counters."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serving import MODEL, reference, sixteen_clients

pytestmark = pytest.mark.slow  # a Ray cluster and three deployments: about a minute here

ray = pytest.importorskip("ray", reason="needs the ray extra")
serve = pytest.importorskip("ray.serve", reason="needs the ray extra")
openai = pytest.importorskip("openai")

TWO, SMALL = "two", "small"  # the application names (and route prefixes)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with Serve's proxy on a free port, its proxy guarding streams
    as `scredge serve --ray` sets it up; shut down whole at the end."""
    from scredge.serve.ray_cluster import PROXY_CALLBACK, PROXY_CALLBACK_ENV

    saved = {k: os.environ.get(k) for k in (PROXY_CALLBACK_ENV, "RAY_USAGE_STATS_ENABLED")}
    os.environ.update({PROXY_CALLBACK_ENV: PROXY_CALLBACK, "RAY_USAGE_STATS_ENABLED": "0"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _deploy(port: int, folder, name: str, **kw) -> str:
    from scredge.serve import ray_app

    serve.run(ray_app(folder, num_cpus=0.5, model_name=MODEL, backend="ort", **kw),
              name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{port}/{name}/v1"


@pytest.fixture(scope="module")
def two(cluster, served_folder):
    return _deploy(cluster, served_folder, TWO, replicas=2, max_batch=16)


def test_two_replicas_sixteen_clients_each_equal_alone(two, engine):
    client = openai.OpenAI(base_url=two, api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(two.removesuffix("/v1") + "/health", timeout=30).json()["status"] == "ok"
    sixteen_clients(client, engine)
    stats = serve.get_app_handle(TWO).broadcast("stats").results(timeout_s=30)
    assert len(stats) == 2 and all(s["steps"] > 0 for s in stats)  # both replicas served


def _stream(url: str, body: dict, out: dict, first: threading.Event) -> None:
    """One streaming request: its events, or the transport error that ended it."""
    events = out.setdefault("events", [])
    try:
        with httpx.Client(timeout=120) as http, http.stream("POST", url, json=body) as resp:
            out["status"] = resp.status_code
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                    first.set()
    except httpx.HTTPError as exc:
        out["transport_error"] = repr(exc)
    first.set()


def _replica_states(name: str) -> dict:
    return serve.status().applications[name].deployments["ScredgeReplica"].replica_states


def test_a_killed_replica_is_replaced_and_no_stream_ends_silently(two, engine):
    """Eight long streams over two replicas; one replica is killed mid-load. Each stream
    either finishes equal to its output alone, or ends with an error event and [DONE];
    Ray starts a new replica, and the application answers again."""
    url, n, tokens = f"{two}/completions", 8, 1500
    outs = [{} for _ in range(n)]
    started = [threading.Event() for _ in range(n)]
    threads = [threading.Thread(target=_stream, args=(url, {
        "model": MODEL, "prompt": f"row {i}", "max_tokens": tokens, "seed": i,
        "stream": True}, outs[i], started[i])) for i in range(n)]
    for t in threads:
        t.start()
    assert all(ev.wait(120) for ev in started)
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and f"{TWO}#ScredgeReplica" in a["name"])
    ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=True)
    for t in threads:
        t.join(300)
    cut = 0
    for i, out in enumerate(outs):
        assert "transport_error" not in out, out.get("transport_error")
        assert out["status"] == 200 and out["events"][-1] == "[DONE]", f"stream {i}"
        last = json.loads(out["events"][-2])
        if "error" in last:
            assert last["error"]["code"] == "replica_unavailable"
            cut += 1
            continue
        text = "".join(json.loads(e)["choices"][0]["text"] for e in out["events"][:-1])
        assert text == reference(engine, f"row {i}", tokens, seed=i).text, f"stream {i}"
    assert 0 < cut < n  # the killed replica held some, the other finished its own
    deadline = time.monotonic() + 120
    while _replica_states(TWO).get("RUNNING", 0) < 2:
        assert time.monotonic() < deadline, _replica_states(TWO)
        time.sleep(1)
    client = openai.OpenAI(base_url=two, api_key="unused", max_retries=0, timeout=120)
    out = client.completions.create(model=MODEL, prompt="again", max_tokens=20, seed=5)
    assert out.choices[0].text == reference(engine, "again", 20, seed=5).text


def test_past_the_queue_a_replica_answers_429(cluster, served_folder):
    """One replica, one row, one queued request: of twelve long requests at once, the
    replica itself refuses those past its queue with OpenAI's 429 (they reach it: Ray may
    send it the batch, the queue and the headroom), and the others complete."""
    base = _deploy(cluster, served_folder, SMALL, replicas=1, max_batch=1, max_queue=1)
    body = {"model": MODEL, "prompt": "busy", "max_tokens": 300, "seed": 1}

    def post(_):
        return httpx.post(f"{base}/completions", json=body, timeout=300)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, range(12)))
    codes = sorted(r.status_code for r in answers)
    refused = [r for r in answers if r.status_code == 429]
    assert refused and set(codes) == {200, 429}, codes
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert len(answers) - len(refused) >= 2  # the running one and the queued one
