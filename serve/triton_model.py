"""The model of a Triton Inference Server Python-backend repository written by
`scredge export-triton`: the server's batching (`Scheduler`, the runtime's batching core)
behind Triton's decoupled transaction policy, one engine per model instance.

The generated `model.py` is only

    class TritonPythonModel(ScredgeTritonModel):
        ARTIFACT = Path(__file__).resolve().parent / "artifact"

so the logic lives here, tested with stand-ins for Triton's objects (Triton itself runs
in its container). Requests carry OpenAI's completion parameters as inputs (`INPUTS`) and
go through the server's own parser and prompt checks; a response carries `text_output`
and `finish_reason`: one per new piece of text with `stream` true (the last one has the
finish reason and the final flag), else one for the whole text. A refused or cut request
gets one response with a `TritonError` carrying the server's message.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import threading
import time
from pathlib import Path

import numpy as np

from scredge.errors import ScredgeError
from scredge.serve.app import fit_context, prompt_ids
from scredge.serve.protocol import ApiError, parse_completion
from scredge.serve.scheduler import Scheduler, Ticket
from scredge.serve.server import SHUTDOWN_BACKSTOP_S, load_engine

# (input name, Triton data type, dims, optional): OpenAI's completion parameters, by name
INPUTS = (("text_input", "TYPE_STRING", "[ 1 ]", False),
          ("max_tokens", "TYPE_INT32", "[ 1 ]", True),
          ("temperature", "TYPE_FP32", "[ 1 ]", True),
          ("top_p", "TYPE_FP32", "[ 1 ]", True),
          ("top_k", "TYPE_INT32", "[ 1 ]", True),
          ("repetition_penalty", "TYPE_FP32", "[ 1 ]", True),
          ("seed", "TYPE_INT64", "[ 1 ]", True),
          ("stop", "TYPE_STRING", "[ -1 ]", True),
          ("stream", "TYPE_BOOL", "[ 1 ]", True))
OUTPUTS = (("text_output", "TYPE_STRING", "[ 1 ]"), ("finish_reason", "TYPE_STRING", "[ 1 ]"))
# config.pbtxt `parameters` (strings) -> the settings an instance reads, with defaults
PARAMETERS = {"max_batch": "16", "max_queue": "64", "timeout_s": "600", "max_context": "",
              "shutdown_grace_s": "30", "backend": "auto", "device": "auto", "threads": ""}


class ScredgeTritonModel:
    """Triton's `TritonPythonModel` interface: initialize, execute (decoupled), finalize."""

    ARTIFACT: Path  # the artifact folder beside model.py, set by the generated subclass

    def initialize(self, args: dict) -> None:
        self.pb = importlib.import_module("triton_python_backend_utils")  # inside Triton
        config = json.loads(args["model_config"])
        if not self.pb.using_decoupled_model_transaction_policy(config):
            raise ScredgeError("the scredge Triton model needs the decoupled policy",
                               received="model_transaction_policy { decoupled: false }",
                               fix="keep config.pbtxt as `scredge export-triton` wrote it")
        p = {**PARAMETERS, **{k: v.get("string_value", "") for k, v in
                              config.get("parameters", {}).items() if isinstance(v, dict)}}
        self.model_name = args.get("model_name") or config.get("name", "scredge")
        self.timeout_s = float(p["timeout_s"])
        self.max_context = int(p["max_context"]) if p["max_context"] else None
        self.grace_s = float(p["shutdown_grace_s"])
        self.engine = load_engine(self.ARTIFACT, p["backend"], p["device"],
                                  int(p["threads"]) if p["threads"] else None)
        self.scheduler = Scheduler(self.engine, int(p["max_batch"]), int(p["max_queue"]))
        self.loop = asyncio.new_event_loop()  # the responders' loop, in its own thread
        self._loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                             name="scredge-triton-responses")
        self._loop_thread.start()
        self.scheduler.start()

    def execute(self, requests) -> None:
        """Queue each request; its responses are sent from the responders' loop as the
        scheduler produces its text (decoupled: nothing is returned here)."""
        for request in requests:
            sender = request.get_response_sender()
            try:
                req, ticket = self._ticket(request)
                self.scheduler.submit(ticket)
            except ApiError as exc:
                self._fail(sender, exc)
                continue
            asyncio.run_coroutine_threadsafe(self._respond(ticket, sender, req.stream),
                                             self.loop)
        return None

    def finalize(self) -> None:
        """Drain as the server does on SIGTERM, then stop the scheduler and free the
        engine."""
        self.scheduler.drain(self.grace_s)
        end = time.monotonic() + self.grace_s + SHUTDOWN_BACKSTOP_S
        while not self.scheduler.idle() and time.monotonic() < end:
            time.sleep(0.05)
        self.scheduler.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(10)
        self.engine.close()

    # ---- one request ----------------------------------------------------------------
    def _ticket(self, request):
        req = parse_completion(self._body(request))  # OpenAI's parameter checks, one place
        ids = prompt_ids(self.engine, req, self.max_context)
        max_tokens = fit_context(req, len(ids), self.max_context)
        if max_tokens == 0:
            raise ApiError(400, "max_tokens is 0: nothing to generate", param="max_tokens")
        return req, Ticket(ids, req.params, req.seed, max_tokens, req.stop, self.loop,
                           self.timeout_s)

    def _body(self, request) -> dict:
        """The request's input tensors as an OpenAI completion body."""
        body: dict = {"model": self.model_name}
        for name, dtype, _, _ in INPUTS:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                continue
            values = np.asarray(tensor.as_numpy()).reshape(-1)
            if dtype == "TYPE_STRING":
                texts = [_text(v, name) for v in values]
                body[name] = texts if name == "stop" else (texts[0] if texts else "")
            elif values.size:
                body[name] = values[0].item()
        body["prompt"] = body.pop("text_input", None)
        if body["prompt"] is None:
            raise ApiError(400, "the input 'text_input' is required", param="text_input")
        return body

    async def _respond(self, ticket: Ticket, sender, stream: bool) -> None:
        parts: list[str] = []
        try:
            while True:
                kind, *rest = await ticket.events.get()
                if kind == "delta" and stream:
                    sender.send(self._response(rest[0], ""))
                elif kind == "delta":
                    parts.append(rest[0])
                elif kind == "done":
                    sender.send(self._response("".join(parts), rest[0]),
                                flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                else:
                    self._fail(sender, rest[0])
                    return
        finally:
            ticket.cancel()

    def _response(self, text: str, finish_reason: str):
        return self.pb.InferenceResponse(output_tensors=[
            self.pb.Tensor("text_output", np.array([text.encode()], dtype=np.object_)),
            self.pb.Tensor("finish_reason", np.array([finish_reason.encode()],
                                                     dtype=np.object_))])

    def _fail(self, sender, exc: ApiError) -> None:
        error = self.pb.TritonError(f"{exc.status} {exc.code or exc.type}: {exc.message}")
        sender.send(self.pb.InferenceResponse(output_tensors=[], error=error),
                    flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _text(value, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"the input '{name}' is not UTF-8 text", param=name) from None
    return str(value)
