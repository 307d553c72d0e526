"""Continuous batching: one thread per engine drives the runtime's batching core.

Requests arrive on a thread-safe queue. Each iteration the loop admits waiting requests
into the core's running `Batch` (their prompts prefilled, equal lengths together, and
joined: SCR_SPEC section 3; a long prompt in chunks, and a request whose client went away
or whose time ran out is cut between two of them), retires the rows that finished, whose
client went away or that ran out of time, and runs one `step`; each row's events become
its request's events (`loop.call_soon_threadsafe` into the request's asyncio queue, once
per loop and iteration). Sampling, stops and text are the core's (runtime/batch.py), exactly as
`Engine.generate` runs a prompt alone, so a request's output does not depend on what else
shares the batch. This module is transport only: tickets, the queue, errors, drain.
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
from scredge.runtime.batch import Batch, Event, Request, Row, check_ids
from scredge.sampling import SamplingParams
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
    grammar: str | None = None  # a compiled response_format: the row's output follows it

    def cancel(self) -> None:
        """The client went away: the row leaves the batch at the next step."""
        self.cancelled.set()


class Scheduler:
    def __init__(self, engine, max_batch: int = 16, max_queue: int = 64,
                 speculative=None) -> None:
        check_limits(max_batch, max_queue)
        self.engine = engine
        tok = engine.tokenizer
        self.stop_ids = frozenset(int(t) for t in tok.eos_ids) if tok is not None else frozenset()
        self.max_batch, self.max_queue = max_batch, max_queue
        self._queue: queue.Queue[Ticket] = queue.Queue()
        self._waiting = 0  # submitted, not yet admitted
        self._lock = threading.Lock()
        self._batch: Batch = engine.batch(speculative)  # a SpeculativeSpec, or None
        self._stop = threading.Event()
        self._cut_at: float | None = None  # set by drain(): in-flight work is cut then
        self._thread: threading.Thread | None = None
        self._outbox: list[tuple[Ticket, tuple]] = []  # events of this iteration
        self.steps = 0  # decode steps run
        self.peak_batch = 0  # most rows decoded together so far
        self.prefills = 0  # admit groups prefilled
        self.skipped = 0  # requests dropped before their prefill (client gone, timed out)
        self.cut_prefills = 0  # requests cut during their prefill (between two chunks)
        self.beat = time.perf_counter()  # the loop's last sign of progress
        self.admitting = 0  # requests taken from the queue, not yet in the batch
        self.died: str | None = None  # why the loop ended, when not asked to

    # ---- the server's side ----------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._batch.rows)

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def draining(self) -> bool:
        return self._cut_at is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stalled(self, stall_s: float) -> str | None:
        """Why /health must say 503: the loop is not running, or work waits and the loop
        has shown no progress (an iteration, a prefill, a step) for `stall_s` seconds."""
        if not self.alive:
            return self.died or "the scheduler thread is not running"
        quiet = time.perf_counter() - self.beat
        if (self.running or self.queued or self.admitting) and quiet > stall_s:
            return (f"the scheduler made no progress for {quiet:.0f} s with {self.running} "
                    f"running and {self.queued} queued requests")
        return None

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
        return not self._batch.rows and self._waiting == 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.beat = time.perf_counter()
                try:
                    self._admit()
                    self._retire()
                    if self._batch.rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the server:
                    log.exception("scheduler step failed")  # fail this batch, go on
                    self._fail_batch(_internal(exc))
                finally:
                    self._flush()
        except BaseException as exc:
            self.died = f"the scheduler thread died: {type(exc).__name__}: {exc}"
            raise
        finally:  # whatever ended the loop, no request is left waiting forever
            cut = ApiError(503, "the server stopped before this request finished",
                           "server_error", code="server_shutting_down")
            self._fail_batch(cut)
            for ticket in self._take(block=False, limit=None):
                self._send(ticket, ("error", cut))
            self._flush()

    def _fail_batch(self, err: ApiError) -> None:
        """Every running request fails with `err`; the batch's state is freed, not reused."""
        for row in self._batch.rows:
            self._send(row.tag, ("error", err))
        self._batch.close(reuse=False)

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

    def _request(self, t: Ticket) -> Request:
        processor = None if t.grammar is None else self.engine.constraint(t.grammar)
        return Request(t.prompt_ids, t.params, t.seed, t.max_tokens, self.stop_ids,
                       [s for s in t.stop if s], logits_processor=processor, tag=t,
                       cancelled=lambda: self._cut_prefill(t))

    def _cut_prefill(self, ticket: Ticket) -> bool:
        """Asked by the core between the chunks of a prompt's prefill: a chunk is progress
        (/health), and a request whose client left or whose time ran out is cut there
        (told why by `_alive`), so a long prefill stops instead of running to its end."""
        self.beat = time.perf_counter()
        return not self._alive(ticket)

    def _admit(self) -> None:
        """Waiting requests join the running batch, their first tokens sampled, one group
        of equal prompt lengths at a time (as the core prefills them): before each group
        the requests whose client left or whose time ran out are dropped, so no prefill
        runs for them afterwards."""
        room = self.max_batch - len(self._batch.rows)
        if room <= 0:
            return
        groups: dict[int, list[Ticket]] = {}
        for t in self._take(block=not self._batch.rows, limit=room):
            groups.setdefault(len(t.prompt_ids), []).append(t)
        self.admitting = sum(len(g) for g in groups.values())
        try:
            self._admit_groups(groups)
        finally:
            self.admitting = 0

    def _admit_groups(self, groups: dict[int, list[Ticket]]) -> None:
        for group in groups.values():
            live = [t for t in group if self._alive(t)]
            self.skipped += len(group) - len(live)
            if live and not self._stop.is_set():
                self._admit_group(live)
                self.prefills += 1
                self.beat = time.perf_counter()
            elif live:  # stopping: the loop's end tells them
                self._requeue(live)
            self.admitting -= len(group)

    def _requeue(self, tickets: list[Ticket]) -> None:
        with self._lock:
            self._waiting += len(tickets)
        for t in tickets:
            self._queue.put(t)

    def _admit_group(self, tickets: list[Ticket]) -> None:
        """One group into the batch; when the backend refuses it (ScredgeError), each is
        tried alone and the one it refuses gets a 400."""
        now = time.perf_counter()
        for t in tickets:
            t.t_admitted = now
        try:
            self._deliver(self._batch.admit([self._request(t) for t in tickets]))
        except ScredgeError:  # one prompt the backend refuses: each alone
            for t in tickets:
                self._admit_alone(t)
        except Exception as exc:  # noqa: BLE001 - the server stays up; these requests fail
            log.exception("prefill failed")
            for t in tickets:
                self._send(t, ("error", _internal(exc)))

    def _admit_alone(self, ticket: Ticket) -> None:
        try:
            self._deliver(self._batch.admit([self._request(ticket)]))
        except ScredgeError as exc:
            self._send(ticket, ("error", ApiError(400, str(exc).replace("\n", "; "))))
        except Exception as exc:  # noqa: BLE001
            log.exception("prefill failed")
            self._send(ticket, ("error", _internal(exc)))

    def _deliver(self, events: list[Event]) -> None:
        """Each row's event to its request: its new text, and its end."""
        now = time.perf_counter()
        for ev in events:
            t: Ticket = ev.tag
            if ev.finish_reason == "cancelled":  # cut in its prefill: `_alive` told it why
                self.cut_prefills += 1
                continue
            t.completion_tokens = ev.row.generated
            if t.t_first is None and ev.accepted:
                t.t_first = now
            if ev.text:
                self._send(t, ("delta", ev.text))
            if ev.finished:
                self._send(t, ("done", ev.finish_reason,
                               usage(len(t.prompt_ids), t.completion_tokens)))

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
        gone: list[Row] = [r for r in self._batch.rows if r.finished or not self._alive(r.tag)]
        if gone:
            self._batch.retire(gone)

    def _step(self) -> None:
        """One decode for every running row; a failing step fails its batch (400 for a
        ScredgeError, else 500) and the server goes on."""
        rows = len(self._batch.rows)
        try:
            events = self._batch.step()
        except Exception as exc:  # noqa: BLE001 - fail this batch, keep serving
            log.exception("decode step failed; the batch's requests fail")
            self._fail_batch(ApiError(400, str(exc).replace("\n", "; "))
                             if isinstance(exc, ScredgeError) else _internal(exc))
            return
        self.steps += 1
        self.peak_batch = max(self.peak_batch, rows)
        self._deliver(events)


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


def check_limits(max_batch: int, max_queue: int) -> None:
    """The scheduler's limits: at least one row, a queue of zero or more."""
    if max_batch < 1 or max_queue < 0:
        raise ScredgeError("invalid serving limits",
                           received=f"max_batch {max_batch}, max_queue {max_queue}",
                           expected="max_batch >= 1, max_queue >= 0")
