"""The HTTP side: a Starlette app serving OpenAI's completions, chat completions (the
folder's chat template), models and a health check, over one `Scheduler`.

Streams are server-sent events (`data: {...}` lines, `data: [DONE]` last); the last chunk
carries the finish reason and the usage. A request cut by the timeout or a shutdown ends
with an error event (`data: {"error": {...}}`) instead, so no client mistakes a cut
stream for a finished one. Errors are OpenAI's JSON (`{"error": {"message", "type",
"param", "code"}}`) with a 4xx status for a bad request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

from scredge.deps import require
from scredge.errors import ScredgeError
from scredge.serve.protocol import (
    ApiError,
    ParsedRequest,
    bad,
    chunk,
    full_response,
    parse_chat,
    parse_completion,
    usage,
)
from scredge.serve.scheduler import Scheduler, Ticket, check_prompt

log = logging.getLogger("scredge.serve")
DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is there


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    max_batch: int = 16  # rows decoded together
    max_queue: int = 64  # requests waiting for a row; past it, 429
    timeout_s: float = 600.0  # a request running longer is cut (504 / an error event)
    max_context: int | None = None  # prompt + max_tokens beyond it: 400
    shutdown_grace_s: float = 30.0  # in-flight requests get this long to finish


def chat_prompt_ids(engine, messages: list[dict]) -> list[int]:
    """The folder's chat template applied to `messages` (with the assistant's turn opened),
    as ids exactly as `Engine.chat` encodes them; 400 when the folder has no template."""
    try:
        return list(engine.chat_ids(messages))
    except ScredgeError as exc:
        raise ApiError(400, _one_line(exc), param="messages", code="no_chat_template"
                       if "template" in exc.what else None) from None


def prompt_ids(engine, req: ParsedRequest) -> list[int]:
    if engine.tokenizer is None:
        raise ApiError(400, f"this model folder has no tokenizer (vocab_size "
                            f"{engine.config.vocab_size}), so the server cannot write text",
                       code="no_tokenizer")
    if req.kind == "chat":
        ids = chat_prompt_ids(engine, req.messages)
    else:
        try:
            ids = (engine.encode_rows(req.prompt)[0] if isinstance(req.prompt, str)
                   else list(req.prompt))
        except ScredgeError as exc:
            raise ApiError(400, _one_line(exc), param="prompt") from None
    check_prompt(ids, engine.config.vocab_size)
    return ids


def fit_context(req: ParsedRequest, n_prompt: int, limit: int | None) -> int:
    """max_tokens within the context limit: a default is shortened, an explicit one
    that does not fit is refused, as OpenAI does."""
    if limit is None:
        return req.max_tokens
    param = "messages" if req.kind == "chat" else "prompt"
    if n_prompt >= limit or (req.max_tokens_given and n_prompt + req.max_tokens > limit):
        raise ApiError(400, f"This model's maximum context length is {limit} tokens; the "
                            f"request asks for {n_prompt + req.max_tokens} ({n_prompt} in "
                            f"the prompt, {req.max_tokens} for the completion). Shorten "
                            f"the prompt or lower max_tokens.", param=param,
                       code="context_length_exceeded")
    return min(req.max_tokens, limit - n_prompt)


def create_app(engine, config: ServerConfig):
    """The ASGI app; its lifespan starts and stops the scheduler thread. The handlers
    below find the engine, the config and the scheduler on `request.app.state`."""
    require("starlette")  # a clear error when the `serve` extra is missing
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    routes = [Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.engine = engine
    app.state.config = config
    app.state.scheduler = Scheduler(engine, config.max_batch, config.max_queue)
    return app


@contextlib.asynccontextmanager
async def lifespan(app):
    scheduler, config = app.state.scheduler, app.state.config
    scheduler.start()
    log.info("serving %s (%s backend, max batch %d)", config.model_name,
             app.state.engine.backend, config.max_batch)
    try:
        yield
    finally:
        scheduler.stop()


def _json(body: dict, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def _error(exc: ApiError):
    return _json(exc.body(), exc.status)


async def health(request):
    scheduler, config = request.app.state.scheduler, request.app.state.config
    ok = scheduler.alive and not scheduler.draining
    body = {"status": "ok" if ok else "draining" if scheduler.draining else "down",
            "model": config.model_name, "running": scheduler.running,
            "queued": scheduler.queued}
    return _json(body, 200 if ok else 503)


async def models(request):
    return _json({"object": "list", "data": [
        {"id": request.app.state.config.model_name, "object": "model", "created": 0,
         "owned_by": "scredge"}]})


async def completions(request):
    return await _generate(request, parse_completion)


async def chat(request):
    return await _generate(request, parse_chat)


async def _generate(request, parse) -> object:
    """Parse, check and queue one request; its answer is a stream or a whole response."""
    state = request.app.state
    try:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad(f"the request body is not valid JSON: {exc}") from None
        req = parse(body)
        if req.model != state.config.model_name:
            raise ApiError(404, f"The model '{req.model}' does not exist; this server "
                                f"serves '{state.config.model_name}'", param="model",
                           code="model_not_found")
        ids = prompt_ids(state.engine, req)
        max_tokens = fit_context(req, len(ids), state.config.max_context)
        if max_tokens == 0:
            log.info("%s %s: 0 tokens asked", req.kind, req.id)
            return _json(full_response(req, "", "length", usage(len(ids), 0)))
        ticket = Ticket(ids, req.params, req.seed, max_tokens, req.stop,
                        asyncio.get_running_loop(), state.config.timeout_s)
        state.scheduler.submit(ticket)
    except ApiError as exc:
        log.info("%s refused (%d): %s", request.url.path, exc.status, exc.message)
        return _error(exc)
    if req.stream:
        from starlette.responses import StreamingResponse

        return StreamingResponse(_sse(req, ticket), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await _collect(req, ticket, request)


async def _sse(req: ParsedRequest, ticket: Ticket):
    outcome = "cancelled (client gone)"
    try:
        if req.kind == "chat":
            yield _event(chunk(req, None, first=True))
        while True:
            ev = await ticket.events.get()
            if ev[0] == "delta":
                yield _event(chunk(req, ev[1]))
                continue
            if ev[0] == "done":
                outcome = ev[1]
                yield _event(chunk(req, None, ev[1], ev[2]))
            else:
                outcome = f"cut: {ev[1].message}"
                yield _event(ev[1].body())
            break
        yield b"data: [DONE]\n\n"
    finally:  # also when the client went away: its row leaves the batch
        ticket.cancel()
        _log_timing(req, ticket, outcome)


async def _collect(req: ParsedRequest, ticket: Ticket, request):
    parts: list[str] = []
    outcome = "cancelled (client gone)"
    next_check = time.perf_counter() + DISCONNECT_POLL_S
    try:
        while True:
            try:
                ev = await asyncio.wait_for(ticket.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                ev = None
            if time.perf_counter() >= next_check:  # deltas keep coming: check by time
                next_check = time.perf_counter() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    return _json({}, 499)  # nobody reads it
            if ev is None:
                continue
            if ev[0] == "delta":
                parts.append(ev[1])
            elif ev[0] == "done":
                outcome = ev[1]
                return _json(full_response(req, "".join(parts), ev[1], ev[2]))
            else:
                outcome = f"cut: {ev[1].message}"
                return _error(ev[1])
    finally:
        ticket.cancel()
        _log_timing(req, ticket, outcome)


async def http_error(request, exc):
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: "
                                            f"{exc.detail}", type_))


async def server_error(request, exc: Exception):
    log.exception("unhandled error")
    return _error(ApiError(500, f"internal error: {type(exc).__name__}", "server_error"))


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def _one_line(exc: Exception) -> str:
    return str(exc).replace("\n", "; ")


def _log_timing(req: ParsedRequest, t: Ticket, outcome: str) -> None:
    """One line per request: where its time went."""
    end = t.t_done or time.perf_counter()
    ttft = (t.t_first - t.t_arrival) if t.t_first else float("nan")
    queued = ((t.t_admitted or end) - t.t_arrival)
    decode = end - t.t_first if t.t_first else 0.0
    rate = (t.completion_tokens - 1) / decode if decode > 0 and t.completion_tokens > 1 else 0.0
    log.info("%s %s: %s; prompt %d, completion %d tokens; queued %.3f s, ttft %.3f s, "
             "total %.3f s, %.1f tokens/s", req.kind, req.id, outcome, len(t.prompt_ids),
             t.completion_tokens, queued, ttft, end - t.t_arrival, rate)
