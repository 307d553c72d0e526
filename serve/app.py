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
from scredge.files import parse_json
from scredge.limits import MAX_REQUEST_BODY_BYTES, SCHEDULER_STALL_S
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
from scredge.serve.scheduler import Scheduler, Ticket, check_limits, check_prompt

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
    speculative: str | None = None  # every request speculates: 'ngram' or a draft's folder
    speculative_k: int = 4  # tokens proposed a step
    max_body_bytes: int = MAX_REQUEST_BODY_BYTES  # a larger request body: 413
    stall_s: float = SCHEDULER_STALL_S  # work waiting, no progress this long: /health 503

    def __post_init__(self) -> None:
        """Refused before any engine loads or replica starts."""
        check_limits(self.max_batch, self.max_queue)
        if self.max_body_bytes < 1:
            raise ScredgeError("invalid --max-body-bytes", received=self.max_body_bytes,
                               expected="a positive number of bytes")


def chat_prompt_text(engine, messages: list[dict]) -> str:
    """The folder's chat template applied to `messages` (the assistant's turn opened); a
    template's refusal (ScredgeError: no template, a limit hit) is a 400."""
    try:
        return engine.render_chat(messages)
    except ScredgeError as exc:
        raise ApiError(400, _one_line(exc), param="messages", code="no_chat_template"
                       if "no chat template" in exc.what else None) from None


def prompt_ids(engine, req: ParsedRequest, max_context: int | None = None) -> list[int]:
    """The request's prompt as ids (blocking: the server runs it in a worker thread).
    Text that cannot fit `max_context` tokens is refused before it is tokenized."""
    if engine.tokenizer is None:
        raise ApiError(400, f"this model folder has no tokenizer (vocab_size "
                            f"{engine.config.vocab_size}), so the server cannot write text",
                       code="no_tokenizer")
    try:
        if req.kind == "chat":  # as Engine.chat_ids: the template writes its own specials
            text = chat_prompt_text(engine, req.messages)
            check_text_length(text, engine.tokenizer, max_context, "messages")
            ids = engine.tokenizer.encode(text, add_special_tokens=False)
        elif isinstance(req.prompt, str):
            check_text_length(req.prompt, engine.tokenizer, max_context, "prompt")
            ids = engine.encode_rows(req.prompt)[0]
        else:
            ids = list(req.prompt)
    except ScredgeError as exc:
        raise ApiError(400, _one_line(exc), param="messages" if req.kind == "chat"
                       else "prompt") from None
    check_prompt(ids, engine.config.vocab_size)
    return ids


def compiled_format(engine, req: ParsedRequest) -> str | None:
    """The request's response_format compiled against the model's tokenizer (None: free
    text); an invalid schema, or one the tokenizer cannot spell, is a 400."""
    if req.response_format is None:
        return None
    try:
        return engine.compile_grammar(response_format=req.response_format)
    except ScredgeError as exc:
        raise ApiError(400, _one_line(exc), param="response_format") from None


def check_text_length(text: str, tokenizer, max_context: int | None, param: str) -> None:
    """A cheap bound before tokenizing: a text of n characters has at least
    n / max_token_chars tokens; 4x slack covers normalizers that drop characters."""
    per_token = getattr(tokenizer, "max_token_chars", None)
    if max_context is None or per_token is None:
        return
    if len(text) > 4 * max_context * max(1, per_token):
        raise ApiError(400, f"This model's maximum context length is {max_context} tokens; "
                            f"the {param} text has {len(text)} characters, more than "
                            f"{max_context} tokens of this tokenizer can spell. Shorten it.",
                       param=param, code="context_length_exceeded")


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
    app.state.scheduler = Scheduler(engine, config.max_batch, config.max_queue,
                                    engine.speculation(config.speculative,
                                                       config.speculative_k))
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
    """200 while the scheduler runs and makes progress; 503 (with the reason) while
    draining, when its thread is gone, or when work waits and nothing moves."""
    scheduler, config = request.app.state.scheduler, request.app.state.config
    problem = scheduler.stalled(config.stall_s)
    status = ("draining" if scheduler.draining else "ok" if problem is None
              else "stalled" if scheduler.alive else "down")
    body = {"status": status, "model": config.model_name, "running": scheduler.running,
            "queued": scheduler.queued}
    if problem is not None:
        body["reason"] = problem
    return _json(body, 200 if status == "ok" else 503)


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
    from starlette.concurrency import run_in_threadpool

    state = request.app.state
    try:
        req = parse(parse_body(await read_body(request, state.config.max_body_bytes)))
        if req.model != state.config.model_name:
            raise ApiError(404, f"The model '{req.model}' does not exist; this server "
                                f"serves '{state.config.model_name}'", param="model",
                           code="model_not_found")
        # templates and tokenizers take their time on long text: off the event loop
        ids = await run_in_threadpool(prompt_ids, state.engine, req, state.config.max_context)
        max_tokens = fit_context(req, len(ids), state.config.max_context)
        if max_tokens == 0:
            log.info("%s %s: 0 tokens asked", req.kind, req.id)
            return _json(full_response(req, "", "length", usage(len(ids), 0)))
        ticket = Ticket(ids, req.params, req.seed, max_tokens, req.stop,
                        asyncio.get_running_loop(), state.config.timeout_s,
                        grammar=compiled_format(state.engine, req))
        state.scheduler.submit(ticket)
    except ApiError as exc:
        log.info("%s refused (%d): %s", request.url.path, exc.status, exc.message)
        return _error(exc)
    if req.stream:
        from starlette.responses import StreamingResponse

        return StreamingResponse(_sse(req, ticket), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await _collect(req, ticket, request)


async def read_body(request, limit: int) -> bytes:
    """The request's body; 413 as soon as it is known to pass `limit` bytes, by its
    Content-Length before any of it is read, else as it streams in (chunked)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(f"{int(declared)} bytes (Content-Length)", limit)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _too_large(f"more than {limit} bytes", limit)
        parts.append(part)
    return b"".join(parts)


def _too_large(received: str, limit: int) -> ApiError:
    return ApiError(413, f"the request body is too large: {received}; this server takes "
                         f"at most {limit} bytes (scredge serve --max-body-bytes)",
                    code="request_too_large")


def parse_body(data: bytes) -> object:
    """JSON through scredge's bounded parser: invalid UTF-8, lone surrogates and nesting
    deeper than MAX_JSON_DEPTH are 400s."""
    try:
        return parse_json(data, "the request body", "the request body",
                          expected="one JSON object (OpenAI's request format)")
    except ScredgeError as exc:
        raise bad(_one_line(exc)) from None


async def _sse(req: ParsedRequest, ticket: Ticket):
    outcome = "cancelled (client gone)"
    try:
        if req.kind == "chat":
            yield sse_event(chunk(req, None, first=True))
        while True:
            ev = await ticket.events.get()
            if ev[0] == "delta":
                yield sse_event(chunk(req, ev[1]))
                continue
            if ev[0] == "done":
                outcome = ev[1]
                yield sse_event(chunk(req, None, ev[1], ev[2]))
            else:
                outcome = f"cut: {ev[1].message}"
                yield sse_event(ev[1].body())
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


# The characters JSON leaves raw (ensure_ascii=False) that Python's str.splitlines, and so
# httpx's `Response.iter_lines`, takes for line ends: SSE ends lines at CR and LF only, but
# raw inside an event they would cut it in two for such a client (a random model's byte
# tokens make them). JSON escapes the C0 ones (\x0b, \x0c, \x1c-\x1e) itself, and these can
# stand only inside a JSON string, where the escape reads back as the same character.
_SPLITLINES_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def sse_event(obj: dict) -> bytes:
    """One server-sent event: `data: {json}` and the blank line; one line whichever way a
    client splits lines (_SPLITLINES_BREAKS)."""
    text = json.dumps(obj, ensure_ascii=False).translate(_SPLITLINES_BREAKS)
    return b"data: " + text.encode() + b"\n\n"


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
