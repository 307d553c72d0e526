"""Class 7 of the hostile-user probe: the HTTP server (`scredge serve`).

One server of the probe's base artifact (no --max-context, --timeout 3, its log in
WORKDIR/server.log) answers most cases; the cases that need other options start their own.
Each case is a client script run like an API case: it exits 2 ("API error: ...") when the
server refused as due, 0 when it served a valid request as due; a 500, or a traceback the
server's log gained meanwhile, is raised as a traceback; a client timeout is a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from probe_fixtures import SCREDGE, Case

SERVER_ARGS = ["--timeout", "3", "--max-batch", "4", "--shutdown-grace", "2"]
LONG_IDS = 40_000  # a prompt whose prefill takes seconds on the micro model

# the client side, prepended to every case's code (run by the probe's API wrapper)
CLIENT = '''
import json, os, pathlib, signal, socket, subprocess, sys, threading, time
import httpx
from scredge.errors import ScredgeError
PORT = int(pathlib.Path("server.port").read_text())
URL = f"http://127.0.0.1:{PORT}"
LOG = pathlib.Path("server.log")
MARK = LOG.stat().st_size

def post(path, raw=None, js=None, url=URL, timeout=40, **kw):
    if js is not None:
        raw = json.dumps(js).encode()
    return httpx.post(url + path, content=raw, timeout=timeout,
                      headers={"content-type": "application/json"}, **kw)

def log_check(log=LOG, mark=None):
    text = log.read_bytes()[MARK if mark is None else mark:].decode(errors="replace")
    if "Traceback" in text:
        raise RuntimeError("the server logged a traceback: "
                           + text[text.index("Traceback"):][-300:])

def answer(resp, refused=(400,), log=LOG, mark=None):
    """Refused as due: ScredgeError (exit 2); served: printed (exit 0); else raised."""
    time.sleep(0.2)
    log_check(log, mark)
    body = resp.text[:200]
    if resp.status_code in refused:
        raise ScredgeError(f"refused {resp.status_code}: {body}")
    if resp.status_code >= 500 and resp.status_code != 504:
        raise RuntimeError(f"server answered {resp.status_code}: {body}")
    if resp.status_code != 200:
        raise ScredgeError(f"answered {resp.status_code}: {body}")
    print("served", resp.status_code, body[:80])

def spawn(*args):
    """Another server of the base artifact; returns (process, url, log path)."""
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    log = pathlib.Path(f"server-{port}.log")
    proc = subprocess.Popen([SCREDGE, "serve", "base", "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the spawned server did not start")

def ids(n):
    return [5 + i % 250 for i in range(n)]
'''


def start_server(work: Path) -> None:
    """The shared server, started once (its port in WORKDIR/server.port)."""
    pid_file = work / "server.pid"
    if pid_file.exists():
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    log = open(work / "server.log", "wb")  # noqa: SIM115 - the server's, kept open
    proc = subprocess.Popen([SCREDGE, "serve", "base", "--port", str(port), *SERVER_ARGS],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    (work / "server.port").write_text(str(port))
    pid_file.write_text(str(proc.pid))


def stop_server(work: Path) -> None:
    pid_file = work / "server.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink()


def case(name: str, code: str, expect: str = "error", timeout: int = 90) -> Case:
    prelude = f"SCREDGE = {SCREDGE!r}\n"
    return Case(f"server {name}", 7, ["py", prelude + CLIENT + code], expect,
                setup=start_server, timeout=timeout)


def _completion(fields: str, refused: str = "(400,)") -> str:
    return ('answer(post("/v1/completions", raw=b\'{"model": "base", "prompt": "hi", '
            + fields + '}\'), ' + refused + ')\n')


def class7() -> list[Case]:
    out = [
        case("body 20 MB", 'answer(post("/v1/completions", raw=b\'{"model": "base", '
             '"prompt": "\' + b"x" * (20 << 20) + b\'"}\'), (413,))\n'),
        case("body 20 MB chunked", 'big = b"{\\"prompt\\": \\"" + b"x" * (20 << 20)\n'
             'answer(post("/v1/completions", raw=(big[i:i + 65536] for i in range(0, '
             'len(big), 65536))), (413,))\n'),
        case("Content-Length 10**11", 's = socket.create_connection(("127.0.0.1", PORT))\n'
             's.sendall(b"POST /v1/completions HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: '
             '100000000000\\r\\nContent-Type: application/json\\r\\n\\r\\n{\\"a\\"")\n'
             's.settimeout(20); head = s.recv(200)\n'
             'log_check()\n'
             'if b" 413 " in head.split(b"\\r\\n")[0]:\n'
             '    raise ScredgeError(head.split(b"\\r\\n")[0].decode())\n'
             'print("answered", head[:60])\n'),
        case("nested JSON 100k", 'answer(post("/v1/chat/completions", raw=b"[" * 100000 '
             '+ b"]" * 100000))\n'),
        case("nested JSON in a message", 'answer(post("/v1/chat/completions", raw=b\'{"model":'
             ' "base", "messages": [{"role": "user", "content": "x", "m": \' + b"[" * 65 + '
             'b"]" * 65 + b"}]}"))\n'),
        case("lone surrogate in chat", 'answer(post("/v1/chat/completions", raw=b\'{"model": '
             '"base", "messages": [{"role": "user", "content": "a\\\\ud800b"}]}\'))\n'),
        case("lone surrogate in prompt", _completion('"prompt": "\\\\udfff"')),
        case("invalid UTF-8 body", 'answer(post("/v1/completions", raw=b\'{"model": "base", '
             '"prompt": "\\xff\\xfe"}\'))\n'),
        case("logprobs false (chat)", 'answer(post("/v1/chat/completions", js={"model": '
             '"base", "messages": [{"role": "user", "content": "hi"}], "logprobs": False, '
             '"max_tokens": 3}))\n', expect="ok"),
        case("logprobs true (chat)", 'answer(post("/v1/chat/completions", js={"model": '
             '"base", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}))\n'),
        case("logprobs 5 (completions)", _completion('"logprobs": 5')),
        case("top_logprobs 3", _completion('"top_logprobs": 3')),
        case("max_tokens 10**12", _completion('"max_tokens": 1000000000000')),
        case("max_tokens 1e6 cut by the timeout", _completion('"max_tokens": 1000000',
                                                              "(504,)")),
        case("temperature -1", _completion('"temperature": -1')),
        case("temperature NaN", _completion('"temperature": NaN')),
        case("top_p Infinity", _completion('"top_p": Infinity')),
        case("temperature 1e308", _completion('"temperature": 1e308')),
        case("top_k -5", _completion('"top_k": -5')),
        case("repetition_penalty 0", _completion('"repetition_penalty": 0')),
        case("ids outside the vocabulary", 'answer(post("/v1/completions", js={"model": '
             '"base", "prompt": [1, 2, 99999]}))\n'),
        case("prompt 7 MB over --max-context", 'proc, url, log = spawn("--max-context", '
             '"256")\ntry:\n    t0 = time.time()\n    r = post("/v1/chat/completions", '
             'url=url, js={"model": "base", "messages": [{"role": "user", "content": "ab " '
             '* (7 << 18)}]})\n    answer(r, (400,), log, 0)\nfinally:\n'
             '    proc.terminate(); proc.wait(30)\n'),
        case("disconnect mid-prefill", _DISCONNECT, expect="ok"),
        case("timeout during a long prefill", 'answer(post("/v1/completions", js={"model": '
             f'"base", "prompt": ids(2 * {LONG_IDS}), "max_tokens": 2}}), (504,))\n'),
        case("hostile + normal together", _HOSTILE, expect="ok"),
        case("SIGTERM during a long prefill", _SIGTERM, expect="ok", timeout=120),
    ]
    return out


_DISCONNECT = f'''
proc, url, log = spawn("--timeout", "60")
try:
    long = {{"model": "base", "prompt": ids({LONG_IDS}), "max_tokens": 1}}
    t0 = time.time()
    post("/v1/completions", url=url, js=long)
    one = time.time() - t0  # one long prefill, served
    def leave():
        try:
            with httpx.stream("POST", url + "/v1/completions", timeout=0.3, json=long) as r:
                r.read()
        except httpx.TimeoutException:
            pass  # gone before the answer
    for _ in range(3):
        leave()
    t0 = time.time()
    r = post("/v1/completions", url=url, js={{"model": "base", "prompt": "after",
                                              "max_tokens": 2}})
    after = time.time() - t0
    if after > 0.6 * one:  # cut between chunks; run to the end they would take ~one or more
        raise ScredgeError(f"abandoned prefills held the server {{after:.1f}} s "
                           f"(one prefill: {{one:.1f}} s)")
    answer(r, (), log, 0)
    print(f"one prefill {{one:.1f}} s; after 3 abandoned: answered in {{after:.1f}} s")
finally:
    proc.terminate(); proc.wait(30)
'''

_HOSTILE = '''
bad = [b"[" * 200000, b'{"model": "base", "prompt": "' + b"y" * (12 << 20) + b'"}',
       b'{"model": "base", "messages": [{"role": "user", "content": "\\\\udc00"}]}']
codes = []
threads = [threading.Thread(target=lambda b=b: codes.append(post("/v1/chat/completions",
           raw=b).status_code)) for b in bad * 2]
for t in threads:
    t.start()
t0 = time.time()
r = post("/v1/completions", js={"model": "base", "prompt": "normal", "max_tokens": 3})
small = time.time() - t0
for t in threads:
    t.join(60)
if sorted(codes) != [400, 400, 400, 400, 413, 413]:
    raise RuntimeError(f"hostile requests answered {sorted(codes)}")
answer(r, ())
print(f"normal request: {small:.2f} s beside 6 hostile ones")
'''

_SIGTERM = f'''
proc, url, log = spawn("--shutdown-grace", "1", "--timeout", "60")
got = []
def long_one():
    try:
        got.append(httpx.post(url + "/v1/completions", timeout=90, json={{"model": "base",
                   "prompt": ids({LONG_IDS}), "max_tokens": 2}}).status_code)
    except httpx.TransportError as exc:
        got.append(type(exc).__name__)
t = threading.Thread(target=long_one); t.start()
time.sleep(1.0)
t0 = time.time()
proc.send_signal(signal.SIGTERM)
try:
    rc = proc.wait(90)
except subprocess.TimeoutExpired:
    proc.kill()
    raise ScredgeError("the server did not exit within 90 s of SIGTERM")
t.join(30)
log_check(log, 0)
print(f"exited {{rc}} after {{time.time() - t0:.1f}} s; the client got {{got}}")
'''
