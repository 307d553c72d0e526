"""Continuous batching: one decode loop per engine, on its own thread.

Requests arrive on a thread-safe queue. Each step the loop admits waiting requests (their
prompts prefilled, equal lengths together, and joined to the running batch: SCR_SPEC v2
section 3, shorter caches left-padded with mask 0), decodes one token for every row,
hands each row's token to its request (`loop.call_soon_threadsafe` into the request's
asyncio queue), and drops at once the rows that finished (stop, end of sequence,
max_tokens), whose client went away, or that ran out of time.

Every row samples with its own parameters and its own random stream seeded by its seed,
exactly as `Engine.generate` samples a prompt alone (`RowSampler` on a batch of one), so a
request's output does not depend on what else shares the batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from scredge.errors import ScredgeError
from scredge.runtime.generation import check_ids, decode_step, prefill, prefill_rows
from scredge.runtime.runners.base import Decoder
from scredge.runtime.stop_text import StopText
from scredge.sampling import RowSampler, SamplingParams, mark_seen, seen_mask
from scredge.serve.protocol import ApiError, usage

log = logging.getLogger("scredge.serve")
IDLE_POLL_S = 0.05  # how long an idle loop waits for a request before checking its flags


@dataclass
class Ticket:
    """One request as both sides see it: the scheduler thread puts events, the server's
    asyncio side reads them from `events`: ("delta", text), then ("done", finish, usage)
    or ("error", ApiError)."""

    prompt_ids: list[int]
    params: SamplingParams
    seed: int | None
    max_tokens: int
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    timeout_s: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    t_arrival: float = field(default_factory=time.perf_counter)
    t_admitted: float | None = None
    t_first: float | None = None
    t_done: float | None = None
    completion_tokens: int = 0

    def cancel(self) -> None:
        """The client went away: the row leaves the batch at the next step."""
        self.cancelled.set()


@dataclass
class _Row:
    ticket: Ticket
    sampler: RowSampler
    seen: np.ndarray | None  # [1,V] for the repetition penalty, else None
    position: int  # absolute position of the token fed next
    text: StopText
    token: int = -1  # sampled, not yet fed
    finished: bool = False


class Scheduler:
    def __init__(self, engine, max_batch: int = 16, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ScredgeError("invalid serving limits",
                               received=f"max_batch {max_batch}, max_queue {max_queue}",
                               expected="max_batch >= 1, max_queue >= 0")
        self.engine = engine
        self.runner = engine.runner
        self.vocab_size = engine.config.vocab_size
        tok = engine.tokenizer
        self.stop_ids = frozenset(int(t) for t in tok.eos_ids) if tok is not None else frozenset()
        self.max_batch, self.max_queue = max_batch, max_queue
        self._queue: queue.Queue[Ticket] = queue.Queue()
        self._waiting = 0  # submitted, not yet admitted
        self._lock = threading.Lock()
        self._rows: list[_Row] = []
        self._batch: Decoder | None = None
        self._stop = threading.Event()
        self._cut_at: float | None = None  # set by drain(): in-flight work is cut then
        self._thread: threading.Thread | None = None
        self._outbox: list[tuple[Ticket, tuple]] = []  # events of this iteration
        self.steps = 0  # decode steps run
        self.peak_batch = 0  # most rows decoded together so far

    # ---- the server's side ----------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def draining(self) -> bool:
        return self._cut_at is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scredge-scheduler",
                                        daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket) -> None:
        """Queue a request; ApiError 503 while shutting down, 429 past the queue bound."""
        if self.draining or self._stop.is_set():
            raise ApiError(503, "the server is shutting down", "server_error",
                           code="server_shutting_down")
        with self._lock:
            if self._waiting >= self.max_queue:
                raise ApiError(429, f"too many queued requests ({self._waiting}); retry later",
                               "requests", code="rate_limit_exceeded")
            self._waiting += 1
        self._queue.put(ticket)

    def drain(self, grace_s: float) -> None:
        """Refuse new requests; let the ones in flight finish for `grace_s` seconds, then
        cut them, each with a final error event saying so."""
        if self._cut_at is None:
            self._cut_at = time.perf_counter() + grace_s
            log.info("draining: %d running, %d queued, cut in %.0f s", self.running,
                     self.queued, grace_s)

    def idle(self) -> bool:
        return not self._rows and self._waiting == 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._admit()
                    self._retire()
                    if self._rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the server:
                    log.exception("scheduler step failed")  # fail this batch, go on
                    for row in self._rows:
                        self._send(row.ticket, ("error", _internal(exc)))
                    self._rows = []
                    self._free_batch(reuse=False)
                finally:
                    self._flush()
        finally:  # whatever ended the loop, no request is left waiting forever
            cut = ApiError(503, "the server stopped before this request finished",
                           "server_error", code="server_shutting_down")
            for row in self._rows:
                self._send(row.ticket, ("error", cut))
            self._rows = []
            self._free_batch(reuse=False)
            for ticket in self._take(block=False, limit=None):
                self._send(ticket, ("error", cut))
            self._flush()

    def _send(self, ticket: Ticket, event: tuple) -> None:
        """Queue an event for its request; `_flush` hands them over after the step."""
        if event[0] != "delta":
            ticket.t_done = time.perf_counter()
        self._outbox.append((ticket, event))

    def _flush(self) -> None:
        """One wake-up of each event loop per step, however many rows got a token (a
        wake-up per token and row costs the loop a system call each)."""
        if not self._outbox:
            return
        out, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Ticket, tuple]]] = {}
        for ticket, event in out:
            by_loop.setdefault(ticket.loop, []).append((ticket, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is gone: nobody is listening
                pass

    def _take(self, block: bool, limit: int | None) -> list[Ticket]:
        out: list[Ticket] = []
        while limit is None or len(out) < limit:
            try:
                ticket = self._queue.get(timeout=IDLE_POLL_S) if block and not out \
                    else self._queue.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self._waiting -= 1
            out.append(ticket)
        return out

    def _admit(self) -> None:
        room = self.max_batch - len(self._rows)
        if room <= 0:
            return
        tickets = [t for t in self._take(block=not self._rows, limit=room) if self._alive(t)]
        if not tickets:
            return
        now = time.perf_counter()
        for t in tickets:
            t.t_admitted = now
        try:
            decoder, logits = prefill_rows(self.runner, [np.asarray(t.prompt_ids, np.int64)
                                                         for t in tickets])
        except ScredgeError:  # one prompt the backend refuses: prefill each alone
            for t in tickets:
                self._admit_alone(t)
            return
        except Exception as exc:  # noqa: BLE001 - the server stays up; these requests fail
            log.exception("prefill failed")
            for t in tickets:
                self._send(t, ("error", _internal(exc)))
            return
        self._add(decoder, [self._start(t, logits[i:i + 1]) for i, t in enumerate(tickets)])

    def _admit_alone(self, ticket: Ticket) -> None:
        decoder = self.runner.decoder(1)
        try:
            logits = prefill(decoder, np.asarray([ticket.prompt_ids], np.int64))
        except ScredgeError as exc:
            decoder.close()
            self._send(ticket, ("error", ApiError(400, str(exc).replace("\n", "; "))))
            return
        except Exception as exc:  # noqa: BLE001
            decoder.close()
            log.exception("prefill failed")
            self._send(ticket, ("error", _internal(exc)))
            return
        self._add(decoder, [self._start(ticket, logits)])

    def _start(self, ticket: Ticket, logits: np.ndarray) -> _Row:
        """A prefilled request's row, its first token sampled from the prompt's logits."""
        prompt = np.asarray([ticket.prompt_ids], np.int64)
        sampler = RowSampler(ticket.params, [ticket.seed])
        seen = (seen_mask(prompt, self.vocab_size)
                if ticket.params.repetition_penalty != 1.0 else None)
        row = _Row(ticket, sampler, seen, len(ticket.prompt_ids),
                   StopText(self.engine.tokenizer.stream_decoder(),  # the app refused none
                            [s for s in ticket.stop if s]))
        self._deliver(row, self._sample(row, logits))
        return row

    def _add(self, decoder: Decoder, rows: list[_Row]) -> None:
        """Join the new rows (in `decoder`) after the running batch's rows."""
        if self._batch is None:
            self._batch, self._rows = decoder, rows
        else:
            try:
                self._batch.join(decoder)
            except BaseException:  # the new rows fail with the batch (the loop's handler)
                decoder.close()
                self._rows += rows
                raise
            self._rows += rows

    @staticmethod
    def _sample(row: _Row, logits: np.ndarray) -> int:
        """The row's next token from its logits [1,V], as `Generator.next_token` samples."""
        token = int(row.sampler(logits, row.seen)[0])
        mark_seen(row.seen, np.array([token]))
        return token

    def _deliver(self, row: _Row, token: int) -> None:
        """Tell the row's request about its new token; finish it when it ends there."""
        row.token = token
        t = row.ticket
        t.completion_tokens += 1
        if t.t_first is None:
            t.t_first = time.perf_counter()
        if token in self.stop_ids:
            return self._finish(row, "stop")
        stopped = row.text.push(token)
        if piece := row.text.release():
            self._send(t, ("delta", piece))
        if stopped:
            return self._finish(row, "stop")
        if t.completion_tokens >= t.max_tokens:
            return self._finish(row, "length")
        return None

    def _finish(self, row: _Row, reason: str) -> None:
        row.text.finish()
        if tail := row.text.release_all():
            self._send(row.ticket, ("delta", tail))
        row.finished = True
        t = row.ticket
        self._send(t, ("done", reason, usage(len(t.prompt_ids), t.completion_tokens)))

    def _alive(self, ticket: Ticket) -> bool:
        """False (and the request told why) when it must not take another step."""
        if ticket.cancelled.is_set():
            return False
        now = time.perf_counter()
        if now - ticket.t_arrival > ticket.timeout_s:
            self._send(ticket, ("error", ApiError(
                504, f"the request ran past the server's timeout ({ticket.timeout_s:g} s)",
                "timeout", code="request_timeout")))
            return False
        if self._cut_at is not None and now >= self._cut_at:
            self._send(ticket, ("error", ApiError(
                503, "the server is shutting down: this request was cut before it finished",
                "server_error", code="server_shutting_down")))
            return False
        return True

    def _retire(self) -> None:
        """Rows that finished, were cancelled or timed out leave the batch now."""
        keep = [i for i, r in enumerate(self._rows) if not r.finished and self._alive(r.ticket)]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows = []
            self._free_batch(reuse=True)
            return
        self._batch.select(keep)
        self._rows = [self._rows[i] for i in keep]

    def _step(self) -> None:
        rows = self._rows
        tokens = np.array([r.token for r in rows], dtype=np.int64)
        positions = np.array([r.position for r in rows], dtype=np.int64)
        try:
            logits = decode_step(self._batch, tokens, positions)
        except Exception as exc:  # noqa: BLE001 - fail this batch, keep serving
            log.exception("decode step failed; the batch's requests fail")
            err = (ApiError(400, str(exc).replace("\n", "; "))
                   if isinstance(exc, ScredgeError) else _internal(exc))
            for r in rows:
                self._send(r.ticket, ("error", err))
            self._rows = []
            self._free_batch(reuse=False)
            return
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(rows))
        greedy = logits.argmax(axis=-1)  # what a greedy row's sampler would return
        for i, r in enumerate(rows):
            r.position += 1
            plain_greedy = r.ticket.params.greedy and r.seen is None
            self._deliver(r, int(greedy[i]) if plain_greedy else self._sample(r, logits[i:i + 1]))

    def _free_batch(self, reuse: bool) -> None:
        if self._batch is not None:
            batch, self._batch = self._batch, None
            (batch.release if reuse else batch.close)()


def _put_all(items: list[tuple[Ticket, tuple]]) -> None:
    """On the event loop: each event into its request's queue."""
    for ticket, event in items:
        ticket.events.put_nowait(event)


def _internal(exc: BaseException) -> ApiError:
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def check_prompt(ids: list[int], vocab_size: int) -> None:
    """Refuse ids outside the vocabulary before the request is queued."""
    try:
        check_ids(np.asarray([ids]), vocab_size)
    except ScredgeError as exc:
        raise ApiError(400, str(exc).replace("\n", "; "), param="prompt") from None
