"""Continuous batching through the server: concurrent clients share decode steps, yet each
gets exactly its output alone; a client that leaves mid-stream leaves the batch at once.
Oracle: `Engine.generate` on each request alone (same seed and parameters), and the
scheduler's own counters (rows decoded together, rows running)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from serving import MODEL, reference, sixteen_clients, wait_until


def test_sixteen_concurrent_clients_each_equal_alone(client, engine, server):
    """16 clients at once (streaming and not, greedy and sampled, stop strings, penalties,
    prompt lengths 1..43): each result equals its request generated alone, and the
    scheduler did decode several of them in one step."""
    before = server.scheduler.peak_batch
    sixteen_clients(client, engine)
    assert server.scheduler.peak_batch > max(before, 1)  # they really shared decode steps


def test_late_request_joins_a_running_batch(client, engine, server):
    """A request sent while a long one is decoding is admitted into its batch (two rows
    decoded together) and both equal their outputs alone."""
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(_collect_stream, client, "Long one", 400, 11)
        wait_until(lambda: server.scheduler.running == 1)
        short = client.completions.create(model=MODEL, prompt="Late", max_tokens=25,
                                          temperature=0.9, seed=12)
        assert not long.done()  # the late one came and went while the long one decoded
        long_text = long.result()
    assert short.choices[0].text == reference(engine, "Late", 25, temperature=0.9,
                                              seed=12).text
    assert long_text == reference(engine, "Long one", 400, temperature=1.0, seed=11).text


def _collect_stream(client, prompt: str, max_tokens: int, seed: int) -> str:
    events = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                       seed=seed, stream=True)
    return "".join(e.choices[0].text for e in events)


def test_client_gone_mid_stream_leaves_the_batch(client, engine, server):
    """A streaming client that disconnects after a few events: its row leaves the batch
    (nothing running) long before its 100,000 tokens, and the server serves the next
    request as usual."""
    url = f"{server.base_url}/completions"
    body = {"model": MODEL, "prompt": "endless", "max_tokens": 100_000, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert sum(1 for _, line in zip(range(5), lines) if line.startswith("data:")) >= 2
        assert server.scheduler.running == 1
    wait_until(lambda: server.scheduler.running == 0, timeout_s=5)
    out = client.completions.create(model=MODEL, prompt="after", max_tokens=10, temperature=0)
    assert out.choices[0].text == reference(engine, "after", 10, temperature=0).text


def test_client_gone_while_waiting_for_a_whole_completion(server):
    """A non-streaming client that gives up (its read timeout) is noticed within the poll
    interval: its row leaves the batch."""
    body = {"model": MODEL, "prompt": "endless", "max_tokens": 100_000}
    try:
        httpx.post(f"{server.base_url}/completions", json=body, timeout=0.5)
    except httpx.TimeoutException:
        pass
    wait_until(lambda: server.scheduler.running == 0, timeout_s=5)
