"""The OpenAI wire format: request bodies parsed into typed requests, and the JSON of
responses, stream chunks and errors.

Sampling parameters keep OpenAI's names (temperature, top_p, max_tokens, stop, seed, n);
ours (top_k, repetition_penalty) come as extra fields (the `openai` client's `extra_body`).
Parameters that would change the result and that we do not implement (n > 1, logprobs,
echo, penalties other than ours) are refused, never silently ignored. `response_format`
({"type": "text" | "json_object" | "json_schema"}, OpenAI's shapes) constrains the output
(runtime/constrained.py); it is checked here for shape and compiled by the app.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field

from scredge.errors import ScredgeError
from scredge.sampling import SamplingParams

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DEFAULT_CHAT_TOKENS = 512  # chat has no OpenAI default; a bound keeps a request finite
MAX_STOP_STRINGS = 4  # as OpenAI
MAX_TOKENS_LIMIT = 1_000_000

# accepted only at their neutral value (other unknown fields, e.g. `user`, are ignored)
_NEUTRAL = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None,
            "presence_penalty": 0, "frequency_penalty": 0, "suffix": None, "logit_bias": None,
            "tools": None, "tool_choice": None, "parallel_tool_calls": None}
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
_ALSO_NEUTRAL = {"logprobs": (False,)}  # chat's "no logprobs", as OpenAI's clients send it


class ApiError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` JSON with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


@dataclass
class ParsedRequest:
    """What the scheduler needs, independent of the endpoint."""

    kind: str  # "completion" | "chat"
    model: str
    prompt: str | list[int]  # text, or token ids (completions only)
    messages: list[dict] | None
    params: SamplingParams
    seed: int | None
    max_tokens: int
    stop: list[str]
    stream: bool
    max_tokens_given: bool = True  # False: the endpoint's default (clamped to the context)
    response_format: dict | None = None  # OpenAI's shape, checked; None = free text
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def parse_completion(body: object) -> ParsedRequest:
    body = _object(body)
    if "prompt" not in body:
        raise bad("'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one, as the client may send it
    if isinstance(prompt, str):
        if not prompt:
            raise bad("'prompt' is empty", "prompt")
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        prompt = [int(t) for t in prompt]
    else:
        raise bad("'prompt' must be one non-empty string or one list of token ids "
                  "(several prompts: send several requests, they are batched)", "prompt")
    return _common("completion", body, prompt, None, DEFAULT_COMPLETION_TOKENS)


def parse_chat(body: object) -> ParsedRequest:
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}] must be an object with a 'role'", "messages")
        clean.append({**m, "content": _content(m.get("content"), i)})
    return _common("chat", body, "", clean, DEFAULT_CHAT_TOKENS)


def _content(content: object, i: int) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _object(body: object) -> dict:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body


def _common(kind: str, body: dict, prompt, messages, default_tokens: int) -> ParsedRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required (see GET /v1/models)", "model")
    _refuse_unsupported(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    given = max_tokens is not None
    if not given:
        max_tokens = default_tokens
    if not _is_int(max_tokens) or not 0 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise bad(f"'max_tokens' must be an integer in 0..{MAX_TOKENS_LIMIT}, "
                  f"got {max_tokens!r}", "max_tokens")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise bad(f"'seed' must be a non-negative integer, got {seed!r}", "seed")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(
            isinstance(s, str) and s for s in stop):
        raise bad(f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS}",
                  "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    return ParsedRequest(kind, model, prompt, messages, _sampling(body), seed,
                         int(max_tokens), list(stop), stream, given,
                         _response_format(body.get("response_format")))


def _response_format(value: object) -> dict | None:
    """OpenAI's response_format, its shape checked (the schema itself is compiled later)."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise bad("'response_format' must be {\"type\": \"text\" | \"json_object\" | "
                  "\"json_schema\"}", "response_format")
    if value["type"] == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
            raise bad("'response_format.json_schema' must be an object with a 'schema' "
                      "object (and 'name', 'strict')", "response_format")
        if not isinstance(spec.get("strict", False), (bool, type(None))):
            raise bad("'response_format.json_schema.strict' must be true or false",
                      "response_format")
    return None if value["type"] == "text" else value


def _refuse_unsupported(body: dict) -> None:
    """A parameter we do not implement is accepted only at a value that changes nothing
    (compared with its JSON type: `true` is not `1`, `false` is not `0`)."""
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        accepted = (None, neutral, *_ALSO_NEUTRAL.get(name, ()))
        if not any(_same(value, a) for a in accepted):
            shown = " or ".join(dict.fromkeys(json.dumps(a) for a in accepted))
            raise bad(f"'{name}' = {json.dumps(value)[:100]} is not supported by this server "
                      f"(only {shown})", name)


def _same(value: object, neutral: object) -> bool:
    if value is None or neutral is None:
        return value is neutral
    if isinstance(value, bool) or isinstance(neutral, bool):
        return type(value) is type(neutral) and value == neutral
    return value == neutral


def _sampling(body: dict) -> SamplingParams:
    values = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    for name in list(values):
        v = body.get(name)
        if v is None:
            continue
        ok = _is_int(v) if name == "top_k" else (
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if not ok:
            raise bad(f"'{name}' must be a {'integer' if name == 'top_k' else 'number'}, "
                      f"got {v!r}", name)
        values[name] = int(v) if name == "top_k" else float(v)
    try:
        return SamplingParams(**values)
    except ScredgeError as exc:
        raise bad(str(exc).replace("\n", ";"), exc.what.split("'")[1] if "'" in exc.what
                  else None) from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---- responses --------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _head(req: ParsedRequest, obj: str) -> dict:
    prefix = "cmpl-" if req.kind == "completion" else "chatcmpl-"
    return {"id": prefix + req.id, "object": obj, "created": req.created, "model": req.model}


def full_response(req: ParsedRequest, text: str, finish: str, use: dict) -> dict:
    if req.kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**_head(req, "text_completion"), "choices": [choice], "usage": use}
    choice = {"index": 0, "message": {"role": "assistant", "content": text},
              "logprobs": None, "finish_reason": finish}
    return {**_head(req, "chat.completion"), "choices": [choice], "usage": use}


def chunk(req: ParsedRequest, text: str | None, finish: str | None = None,
          use: dict | None = None, first: bool = False) -> dict:
    """One stream event's JSON; the last (finish set) carries the usage."""
    if req.kind == "completion":
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        out = {**_head(req, "text_completion"), "choices": [choice]}
    else:
        delta: dict = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        out = {**_head(req, "chat.completion.chunk"), "choices": [choice]}
    if use is not None:
        out["usage"] = use
    return out
