"""The batching core: the one decode loop under `Engine.generate`/`stream`/`chat`, the
`Generator` and the server's scheduler.

    batch = Batch(runner, tokenizer)
    events = batch.admit([Request(ids, params, seed=1, max_tokens=64, stop_texts=["\\n\\n"])])
    while True:
        for ev in events:                   # ev.row, ev.text (a new piece), ev.finish_reason
            ...
        batch.retire()                      # the finished rows leave (retire(rows): any rows)
        if not batch.rows:
            break
        events = batch.step()               # one decode for every row

A row (`Row`, made from a `Request`) carries its own sampling parameters and random stream
(seeded by its seed: a row draws exactly what its prompt alone would draw, whatever shares
the batch), its repetition-penalty state (a [1,V] seen mask, only when the penalty is on),
its stop ids and stop strings, its token budget and its finish reason. `admit` prefills
new prompts (equal lengths together, SCR_SPEC section 3; `prefill_chunk` positions a call,
and between chunks a request's `cancelled` can cut its row) and joins them into the running
batch; `step` runs one decode for every row, samples each row's token (the rows that are
plain greedy in one vectorised argmax, the others each with its own sampler) and turns
tokens into per-row events (`Event`: the row's new text, and its finish reason when it
finished); `retire` drops rows, which are never computed again. A row's text is its
stream: the text of its result is exactly the concatenation of its events' pieces.

Seams, so the next features plug in here rather than into a second loop:

- Logits processors (constrained output): `Request.logits_processor`, a `LogitsProcessor`
  called on the row's logits [V] before sampling (`Row.choose`) and told every token the
  row accepts (`Batch._accept`). A row with one never takes the greedy fast path.
- Multi-token steps (speculative decoding): `step` is `_feed` (run the decoder on the
  pending tokens, the only model call: runtime/decoding.py), `_choose` (one token per
  row) and `_accept(row, tokens)`, which takes a sequence per row and stops at the token
  that finishes it, returning how many it took. A speculative step forwards k+1 tokens,
  verifies, passes each row its accepted prefix to `_accept`, and rolls the cache and SCR
  carries back to the accepted length (a cache method to add beside `join`/`select`).
- The cache: the core touches decoder state only through `cache.BatchCache` (`step`,
  `join`, `select`, `release`, `close`) and the per-row absolute positions it keeps itself, so the
  in-place shared form of SCR_SPEC v3 section 3 (rows from slot 0 with their own lengths)
  can replace the left-padded concat join/select inside the decoder, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scredge.errors import ScredgeError
from scredge.runtime.cache import BatchCache
from scredge.runtime.decoding import (
    MAX_NEW_TOKENS,
    PREFILL_CHUNK,
    check_ids,
    check_max_new_tokens,
    check_prefill_chunk,
    check_stop_ids,
    decode_step,
    prefill,
    prefill_rows,
)
from scredge.runtime.runners.base import Runner
from scredge.runtime.stop_text import StopText
from scredge.runtime.tokenizer import Tokenizer
from scredge.sampling import (
    GREEDY,
    RowSampler,
    SamplingParams,
    check_seed,
    mark_seen,
    seen_mask,
)

__all__ = ["MAX_NEW_TOKENS", "Batch", "Event", "LogitsProcessor", "Request", "Row",
           "check_ids"]  # check_ids: what a server checks a prompt with before queueing it


# ---- rows -------------------------------------------------------------------------------
class LogitsProcessor(Protocol):
    """A per-row hook between the model and the sampler (e.g. a grammar's token mask)."""

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """This row's logits [V] float32 (a copy it may change in place) -> the logits to
        sample from (e.g. -inf where the grammar forbids a token)."""

    def accept(self, token: int) -> None:
        """The token the row took (the grammar's state moves on)."""

    # Optional: `is_done() -> bool`, the output is complete (the row ends, finish 'stop',
    # after the token that completed it); `rollback(n)`, undo the last n accepted tokens
    # (needed with speculative decoding, which tries a grammar along the drafts).


@dataclass
class Request:
    """What one row is asked to generate. `stop_ids` end the row (the id is not part of its
    output); `stop_texts` cut its text before the first of them (needs a tokenizer);
    `tag` is the caller's (the server's ticket), carried on the row."""

    prompt: Sequence[int]
    params: SamplingParams = GREEDY
    seed: int | None = 0
    max_tokens: int = MAX_NEW_TOKENS
    stop_ids: Collection[int] = ()
    stop_texts: Sequence[str] = ()
    logits_processor: LogitsProcessor | None = None
    tag: object = None
    # asked between the chunks of its prompt's prefill: True cuts the row there (finish
    # 'cancelled', it never joins the batch): a client gone, a deadline passed
    cancelled: Callable[[], bool] | None = None


class Row:
    """One sequence of a batch: its request, sampler, seen mask, output and finish."""

    def __init__(self, request: Request, vocab_size: int, tokenizer: Tokenizer | None,
                 keep: bool = True) -> None:
        self.request = request
        self.prompt = check_ids(np.asarray(request.prompt)[None], vocab_size)[0]  # [T]
        self.max_tokens = check_max_new_tokens(request.max_tokens)
        self.stop_ids = frozenset(check_stop_ids(request.stop_ids, vocab_size).tolist())
        stops = list(request.stop_texts)
        if not all(isinstance(s, str) and s for s in stops):
            raise ScredgeError("stop strings must be non-empty strings",
                               received=repr(stops)[:200])
        if stops and (tokenizer is None or not keep):
            raise ScredgeError("stop strings need a tokenizer", received=repr(stops)[:200],
                               fix="stop on token ids instead")
        params = request.params
        self.sampler = RowSampler(params, [check_seed(request.seed)])
        self.seen = (seen_mask(self.prompt[None], vocab_size)
                     if params.repetition_penalty != 1.0 else None)
        self.processor = request.logits_processor
        # plain greedy: one argmax for all such rows of a step, no copy, no sampler
        self.fast = params.greedy and self.seen is None and self.processor is None
        self._stream = (StopText(tokenizer.stream_decoder(), stops)
                        if keep and tokenizer is not None else None)
        self._ids: list[int] | None = [] if keep and self._stream is None else None
        self.generated = 0  # tokens taken (a stop id included), the usage's count
        self.finish_reason: str | None = None if self.max_tokens else "length"

    @property
    def tag(self) -> object:
        return self.request.tag

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def ids(self) -> list[int]:
        """The output ids: no stop id, none of a stop string's tokens."""
        if self._stream is not None:
            return list(self._stream.ids)
        return list(self._ids or ())

    @property
    def text(self) -> str:
        """The output text so far (also what is not released yet; the whole of it once
        finished), cut at a stop string."""
        return self._stream.text if self._stream is not None else ""

    def choose(self, logits: np.ndarray) -> int:
        """This row's next token from its logits [V], with its own sampler and seen mask."""
        x = logits[None]
        if self.processor is not None:
            x = np.asarray(self.processor(np.array(logits, dtype=np.float32)))[None]
        token = int(self.sampler(x, self.seen)[0])
        mark_seen(self.seen, np.array([token]))
        return token

    def take(self, token: int) -> tuple[str, bool]:
        """Accept one token: its released text, and whether a stop string ended the row."""
        if self._stream is None:
            if self._ids is not None:
                self._ids.append(token)
            return "", False
        stopped = self._stream.push(token)
        return self._stream.release(), stopped

    def finish(self, reason: str) -> str:
        """End the row; the text still held back, now released."""
        self.finish_reason = reason
        if self._stream is None:
            return ""
        self._stream.finish()
        return self._stream.release_all()


@dataclass(frozen=True, slots=True)
class Event:
    """What a row did in one admit/step: `text`, its new piece ('' when none is final yet);
    `finish_reason` ('stop' | 'length', or 'cancelled': cut during its prefill by its
    request's `cancelled`, never joined) when it finished there; `accepted`, the tokens it
    took (a multi-token step may offer more)."""

    row: Row
    text: str = ""
    finish_reason: str | None = None
    accepted: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def tag(self) -> object:
        return self.row.tag


# ---- the batch --------------------------------------------------------------------------
class Batch:
    """Rows decoded together. Between calls every row either waits with a chosen token not
    yet fed to the model (`tokens`: a running batch) or with the logits of its last fed
    position, its next token not chosen yet (after `admit(..., choose=False)` or `extend`:
    the `Generator`'s lazy order). keep=False: rows keep no output (ids, text) at all, for
    callers that take each step's `tokens` themselves (constant memory however long)."""

    def __init__(self, runner: Runner, tokenizer: Tokenizer | None = None,
                 keep: bool = True, speculation=None, prefill_chunk: int = PREFILL_CHUNK) -> None:
        self.runner = runner
        self.prefill_chunk = check_prefill_chunk(prefill_chunk)
        # runtime/speculative.py's Speculation: multi-token steps while rows wait with
        # chosen tokens (None: one token a step)
        self.speculation = speculation
        self.tokenizer = tokenizer
        self.keep = keep
        self.vocab_size = runner.config.vocab_size
        self.rows: list[Row] = []
        self.decoder: BatchCache | None = None
        self.steps = 0  # decode calls run
        self.prefill_chunks = 0  # prefill calls run (a group's chunk of up to prefill_chunk)
        self._position = np.zeros(0, dtype=np.int64)  # [B] absolute position fed next
        self._fast = np.zeros(0, dtype=bool)  # [B] plain greedy rows
        self._pending: np.ndarray | None = None  # [B] chosen, not yet fed
        self._logits: np.ndarray | None = None  # [B,V] of the last fed position

    @property
    def logits(self) -> np.ndarray | None:
        """[B,V] of each row's last fed position while the rows wait to choose, else None."""
        return self._logits

    @property
    def tokens(self) -> np.ndarray | None:
        """The tokens chosen at the last admit/step, one per row (None: not chosen yet)."""
        return self._pending

    def admit(self, requests: Sequence[Request], choose: bool = True) -> list[Event]:
        """Prefill the requests' prompts and join them after the running rows. A running
        batch (and an empty one when `choose`) samples their first tokens now, from the
        prompts' logits; otherwise they wait, as the batch does, for `step`. All or none:
        on a failure nothing is admitted and the running rows are as they were."""
        new = [Row(r, self.vocab_size, self.tokenizer, self.keep) for r in requests]
        if not new:
            return []
        part = Batch(self.runner, self.tokenizer, self.keep)
        part.decoder, part._logits = prefill_rows(
            self.runner, [r.prompt for r in new], self.prefill_chunk, self._cutter(new))
        cut = [Event(r, r.finish("cancelled"), "cancelled") for r in new
               if r.finish_reason == "cancelled"]
        new = [r for r in new if r.finish_reason != "cancelled"]
        if not new:
            return cut
        part.rows = new
        part._position = np.array([len(r.prompt) for r in new], dtype=np.int64)
        part._fast = np.array([r.fast for r in new], dtype=bool)
        done = [Event(r, "", r.finish_reason) for r in new if r.finished]  # max_tokens 0
        events = []
        try:
            if (self.rows and self._pending is not None) or (not self.rows and choose):
                events = part._choose_and_accept()
            self.join(part)
        except BaseException:
            part.close(reuse=False)
            raise
        return cut + done + events

    def _cutter(self, rows: list[Row]):
        """The prefill's cancellation check over `rows` (each request's `cancelled`), which
        also counts the chunks that run."""
        def cut(members: list[int]) -> list[int]:
            gone = [i for i in members if rows[i].request.cancelled is not None
                    and rows[i].request.cancelled()]
            for i in gone:
                rows[i].finish_reason = "cancelled"
            self.prefill_chunks += len(gone) < len(members)
            return gone
        return cut

    def step(self) -> list[Event]:
        """One decode for every row (finished rows too, until they are retired: a batch
        shares every call), then each row's next token; events for the unfinished rows."""
        if not self.rows:
            raise ScredgeError("step() on an empty batch", fix="admit() requests first")
        return self._choose_and_accept()

    def extend(self, ids: np.ndarray) -> None:
        """Feed more tokens to every row (ids [B,T], a later turn), after the token each
        chose; their next tokens are then chosen by `step`."""
        if self._pending is not None:
            ids = np.concatenate([self._pending[:, None], ids], axis=1)
            self._pending = None
        for row, fed in zip(self.rows, ids):
            mark_seen(row.seen, fed[None])
        self._logits = prefill(self.decoder, ids, self._position)
        self._position = self._position + ids.shape[1]

    def retire(self, rows: Iterable[Row] | None = None) -> None:
        """Drop `rows` (default: every finished row); they are never decoded again. With
        no row left, the decoder goes back to the runner."""
        gone = ({id(r) for r in self.rows if r.finished} if rows is None
                else {id(r) for r in rows})
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.close()
            return
        self.decoder.select(keep)
        self.rows = [self.rows[i] for i in keep]
        self._position, self._fast = self._position[keep], self._fast[keep]
        if self._pending is not None:
            self._pending = self._pending[keep]
        if self._logits is not None:
            self._logits = self._logits[keep]

    def join(self, other: Batch) -> None:
        """Append `other`'s rows (a batch on the same runner) after these, from the next
        step on; `other` is left empty. Where one side waits with chosen tokens and the
        other with logits, the chosen tokens are fed first, so both wait with logits."""
        if other is self or other.runner is not self.runner:
            raise ScredgeError("join() takes another batch on the same runner",
                               received="itself" if other is self else "another runner's")
        if not other.rows:
            return
        if not self.rows:
            self._adopt(other)
            return
        if (self._pending is None) != (other._pending is None):
            self._feed()
            other._feed()
        self.decoder.join(other.decoder)  # on a failure `other` is untouched: the caller closes it
        self.rows += other.rows
        for name in ("_position", "_fast", "_pending", "_logits"):
            mine = getattr(self, name)
            if mine is not None:
                setattr(self, name, np.concatenate([mine, getattr(other, name)]))
        other.decoder, other.rows = None, []
        other._reset()

    def close(self, reuse: bool = True) -> None:
        """Drop every row. reuse: hand the decoder back to the runner (the TensorRT runner
        reuses its context and buffers); False, after a failure, frees it instead, so no
        later batch inherits its state."""
        decoder, self.decoder = self.decoder, None
        self.rows = []
        self._reset()
        if self.speculation is not None:
            self.speculation.forget(())  # the rows' draft decoders go back
        if decoder is not None:
            (decoder.release if reuse else decoder.close)()

    # ---- a step: run the decoder, choose, accept ------------------------------------------
    def _feed(self) -> None:
        """Run the decoder on the chosen tokens: every row then waits with logits."""
        if self._pending is None:
            return
        self._logits = decode_step(self.decoder, self._pending, self._position)
        self._position = self._position + 1
        self._pending = None
        self.steps += 1

    def _choose_and_accept(self) -> list[Event]:
        if self.speculation is not None and self._pending is not None:
            return self.speculation.step(self)  # verify proposals: 1..k+1 tokens a row
        self._feed()
        logits, self._logits = self._logits, None
        self._pending = tokens = self._choose(logits)
        events = []
        for row, token in zip(self.rows, tokens.tolist()):
            if not row.finished:
                events.append(self._accept(row, (token,)))
        return events

    def _choose(self, logits: np.ndarray) -> np.ndarray:
        """One token per row from logits [B,V]: one argmax for the plain greedy rows, each
        other row with its own processor, sampler and seen mask."""
        fast = self._fast
        if fast.all():
            return logits.argmax(axis=-1).astype(np.int64)
        tokens = np.empty(len(self.rows), dtype=np.int64)
        if fast.any():
            tokens[fast] = logits[fast].argmax(axis=-1)
        for i in np.flatnonzero(~fast):
            tokens[i] = self.rows[i].choose(logits[i])
        return tokens

    @staticmethod
    def _accept(row: Row, tokens: Sequence[int]) -> Event:
        """The row takes `tokens` in order until one finishes it (a stop id, a stop string,
        its budget): the text they release and its finish, as one event."""
        pieces, taken = [], 0
        for token in tokens:
            taken += 1
            row.generated += 1
            if row.processor is not None:
                row.processor.accept(token)
            if token in row.stop_ids:
                pieces.append(row.finish("stop"))
                break
            piece, stopped = row.take(token)
            pieces.append(piece)
            if stopped:
                pieces.append(row.finish("stop"))
                break
            if row.generated >= row.max_tokens:
                pieces.append(row.finish("length"))
                break
            if row.processor is not None and getattr(row.processor, "is_done", bool)():
                pieces.append(row.finish("stop"))  # the grammar is complete
                break
        return Event(row, "".join(pieces), row.finish_reason, taken)

    def _adopt(self, other: Batch) -> None:
        for name in ("decoder", "rows", "_position", "_fast", "_pending", "_logits"):
            setattr(self, name, getattr(other, name))
        other.decoder, other.rows = None, []
        other._reset()

    def _reset(self) -> None:
        self._position = np.zeros(0, dtype=np.int64)
        self._fast = np.zeros(0, dtype=bool)
        self._pending = self._logits = None
