"""Speculative decoding: cheap proposals, verified by the target model k+1 tokens at a time.

A step feeds each row its pending token and its proposal d1..dk in one call (T = k+1:
SCR_SPEC section 3's graph serves any T), walks the logits to accept a prefix of the
proposal (`verify_row`), and rolls the cache and SCR carries back to what was accepted
(`rollback`). The row then takes the accepted drafts plus one token of its own (the
correction at the first rejection, or a bonus after k acceptances): 1..k+1 tokens a call.

Proposers (`proposer(spec, runner)` builds one per row):
- `NgramProposer` (prompt lookup): the last n tokens (n = max_n down to min_n) looked up in
  the row's own history; the k tokens that followed their latest earlier occurrence.
- `DraftProposer`: another artifact with the same tokenizer and vocabulary, run ahead k
  tokens with the row's sampling parameters (its own decoder, batch 1, rolled back the
  same way).

Acceptance (`accept_token`, Leviathan et al. 2023 / Chen et al. 2023): greedy accepts a draft
while it equals the target's argmax, so the output is plain greedy's, token for token.
Sampled accepts d with probability min(1, p(d)/q(d)) and on a rejection draws from
max(0, p - q) renormalised, so every token is distributed as the target's p (an n-gram
proposal is a point mass: q(d) = 1). p is the row's own sampling distribution (temperature,
top-k, top-p, repetition penalty, and a grammar's mask), from the row's own random stream.

Rollback: the carries are prefix sums the graph returns only at the end of a call, so the
state before the verify call is kept (`Decoder.snapshot`: the arrays by reference on the
CPU) and, when a row accepted fewer than k+1 tokens, either its cache is cut (a model with
no SCR layer: the new keys are the last T of the returned cache, appended to the kept one
and trimmed to the window) or the accepted tokens are run again from the kept state (a
call of T = j+1 per group of rows accepting j), which rebuilds the SCR carries exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scredge import contract
from scredge.errors import ScredgeError
from scredge.runtime.cache import HostState, join_states, select_rows
from scredge.runtime.decoding import positions, prefill
from scredge.runtime.runners.base import Decoder, Runner
from scredge.sampling import Sampler, draw

DEFAULT_K = 4  # proposed tokens per step
MAX_K = 32
NGRAM_MAX_N, NGRAM_MIN_N = 3, 1


@dataclass(frozen=True)
class SpeculativeSpec:
    """How to speculate: `method` 'ngram' or 'draft' (then `draft`, the draft model's
    Runner); k tokens proposed per step; the n-gram sizes tried, longest first."""

    method: str
    k: int = DEFAULT_K
    draft: Runner | None = None
    max_n: int = NGRAM_MAX_N
    min_n: int = NGRAM_MIN_N

    def __post_init__(self) -> None:
        if self.method not in ("ngram", "draft"):
            raise ScredgeError("unknown speculative method", received=repr(self.method),
                               expected="'ngram', or a draft model (an Engine or its folder)")
        check_k(self.k)
        if not 1 <= self.min_n <= self.max_n:
            raise ScredgeError("invalid n-gram sizes", received=(self.min_n, self.max_n),
                               expected="1 <= min_n <= max_n")
        if self.method == "draft" and self.draft is None:
            raise ScredgeError("a draft model is needed", fix="pass the draft's Engine")


def check_k(k: object) -> int:
    """Tokens proposed a step: an integer in 1..MAX_K (checked even where nothing
    speculates, so a bad value is never silently ignored)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ScredgeError("invalid speculative k", received=repr(k)[:80],
                           expected=f"an integer in 1..{MAX_K}")
    return k


def check_draft(target_config, target_tokenizer, draft_config, draft_tokenizer,
                name: str) -> None:
    """A draft must share the target's vocabulary and tokenizer: refused by name if not."""
    if draft_config.vocab_size != target_config.vocab_size:
        raise ScredgeError("the draft model has another vocabulary",
                           received=f"{name}: vocab_size {draft_config.vocab_size}",
                           expected=f"vocab_size {target_config.vocab_size}, as the target",
                           fix="use a draft exported from the same tokenizer")
    if _tokenizer_identity(draft_tokenizer) != _tokenizer_identity(target_tokenizer):
        raise ScredgeError("the draft model has another tokenizer",
                           received=f"{name}: {_tokenizer_name(draft_tokenizer)}",
                           expected=f"the target's tokenizer ({_tokenizer_name(target_tokenizer)})",
                           fix="use a draft exported from the same tokenizer")


def _tokenizer_identity(tok) -> object:
    if tok is None:
        return None
    if hasattr(tok, "to_json_text"):
        import hashlib

        text = tok.to_json_text()
        return ("hf", hashlib.sha256(text.encode()).hexdigest(), tuple(tok.eos_ids))
    return type(tok).__name__


def _tokenizer_name(tok) -> str:
    ident = _tokenizer_identity(tok)
    return f"tokenizer.json sha256 {ident[1][:12]}" if isinstance(ident, tuple) else str(ident)


# ---- proposers --------------------------------------------------------------------------
class NgramProposer:
    """Prompt lookup over one row's history (its prompt and every token it took). An index
    per n maps each n-gram to the position after its latest occurrence whose next token is
    known, updated as tokens arrive: O(max_n) a token, O(max_n) a proposal."""

    def __init__(self, prompt: Sequence[int], max_n: int = NGRAM_MAX_N,
                 min_n: int = NGRAM_MIN_N) -> None:
        self.max_n, self.min_n = max_n, min_n
        self.history: list[int] = []
        self._index: list[dict[tuple, int]] = [{} for _ in range(max_n + 1)]
        self.push(prompt)

    def push(self, tokens: Sequence[int]) -> None:
        h = self.history
        for t in tokens:
            i = len(h)  # t's position: every n-gram ending just before it now has a next
            for n in range(self.min_n, self.max_n + 1):
                if i >= n:
                    self._index[n][tuple(h[i - n:i])] = i
            h.append(int(t))

    def propose(self, k: int, pending: int | None = None) -> tuple[list[int], None]:
        """Up to k tokens after the history (which ends with the pending token), none when
        no n-gram recurs; q is a point mass (None)."""
        h = self.history
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(h) < n:
                continue
            at = self._index[n].get(tuple(h[-n:]))
            if at is not None:
                return h[at:at + k], None
        return [], None

    def accepted(self, pending: int, tokens: Sequence[int], drafted: int) -> None:
        """The row took `tokens` (`drafted` of them from the proposal); `pending` is in the
        history already."""
        self.push(tokens)

    def close(self) -> None:
        return None


class DraftProposer:
    """A draft model run ahead k tokens for one row, on its own decoder (batch 1).

    Between steps the draft has fed the row's history except `unfed` (tokens the row took
    that the draft has not fed yet) and the row's pending token. A proposal feeds those in
    one call, keeps the state after it (`Decoder.snapshot`), then runs k-1 single steps;
    after the verify the draft goes back to that state and owes only the accepted drafts,
    so a rejection never re-feeds more than k tokens."""

    def __init__(self, runner: Runner, prompt: Sequence[int], sampler: Sampler) -> None:
        self.runner = runner
        self.sampler = sampler  # the row's parameters, its own random stream
        self.decoder: Decoder = runner.decoder(1)
        self.position = 0
        self.unfed: list[int] = [int(t) for t in prompt]
        self._saved: HostState | None = None  # the state after the proposal's first call
        self._saved_position = 0
        self._drafts: list[int] = []

    def propose(self, k: int, pending: int) -> tuple[list[int], np.ndarray]:
        """k draft tokens after `pending`, and their draft distributions q [k,V]."""
        ids = np.asarray(self.unfed + [int(pending)], dtype=np.int64)[None]
        self.unfed = []
        drafts, qs = [], []
        for i in range(k):
            logits = prefill(self.decoder, ids, self.position)  # chunked when long
            self.position += ids.shape[1]
            if i == 0:
                self._saved, self._saved_position = self.decoder.snapshot(), self.position
            q = self.sampler.distribution(logits)[0]
            token = int(q.argmax()) if self.sampler.params.greedy else int(
                draw(q[None], self.sampler.uniforms(1))[0])
            drafts.append(token)
            qs.append(q)
            ids = np.array([[token]], dtype=np.int64)
        self._drafts = drafts
        return drafts, np.stack(qs)

    def accepted(self, pending: int, tokens: Sequence[int], drafted: int) -> None:
        """The row fed `pending` and took `tokens`: `drafted` accepted drafts, then its own
        token (the next pending one). With every draft accepted the draft owes only d_k;
        otherwise it goes back to the state after the proposal's first call and owes the
        accepted drafts. Without a proposal this step, `pending` and the drafts are due."""
        if self._saved is None:
            self.unfed += [int(pending)] + [int(t) for t in tokens[:-1]]
            return
        if drafted == len(self._drafts):
            self.unfed = [self._drafts[-1]]
        else:
            if drafted < len(self._drafts) - 1:  # the draft ran past the accepted ones
                self.decoder.load_state(self._saved)
                self.position = self._saved_position
                self.unfed = self._drafts[:drafted]
            else:  # it fed d1..d(k-1), all accepted: nothing to undo
                self.unfed = []
        self._saved = None

    def close(self) -> None:
        self.decoder.release()


# ---- acceptance -------------------------------------------------------------------------
def accept_token(p: np.ndarray, q: np.ndarray | None, draft: int,
                 u_accept: float, u_resample: float) -> tuple[bool, int]:
    """One draft token against the target distribution p [V]: (accepted, the token taken).
    q [V] is the draft's distribution (None: a point mass on `draft`). Accept with
    probability min(1, p(d)/q(d)); otherwise draw from max(0, p - q) renormalised."""
    qd = 1.0 if q is None else float(q[draft])
    if qd > 0 and u_accept * qd < p[draft]:  # u < p/q without dividing
        return True, int(draft)
    residual = p.copy()
    if q is None:
        residual[draft] = 0.0
    else:
        residual = np.maximum(residual - q, 0.0)
    if not residual.sum() > 0:  # p == q exactly (then acceptance was certain): p itself
        residual = p
    return False, int(draw(residual[None], np.array([u_resample]))[0])


def verify_row(logits: np.ndarray, drafts: Sequence[int], q: np.ndarray | None,
               sampler: Sampler, seen: np.ndarray | None, processor=None) -> list[int]:
    """The tokens a row takes from one verify call: logits [K+1,V] of its pending token and
    drafts d1..dk (k <= K), q [k,V] the draft's distributions (None for n-gram). Returns the
    accepted drafts and one more token of the row's own. Greedy: draft i is accepted iff it
    is the argmax, and the extra token is the argmax (no random draw), so the tokens are
    plain greedy decoding's. The row's seen mask is marked with the tokens taken; a
    processor (grammar) sees each position after the tokens before it and is left as it
    was (rolled back), for the caller to `accept` the tokens as any step's."""
    taken: list[int] = []
    greedy = sampler.params.greedy
    for i in range(len(drafts) + 1):
        x = np.array(logits[i], dtype=np.float32)
        if processor is not None:
            x = np.asarray(processor(x))
        if greedy:
            token = int(sampler(x[None], seen)[0])
            ok = i < len(drafts) and token == int(drafts[i])
        elif i < len(drafts):
            p = sampler.distribution(x[None], seen)[0]
            u_accept, u_resample = sampler.uniforms(1)[0], sampler.uniforms(1)[0]
            ok, token = accept_token(p, None if q is None else q[i], int(drafts[i]),
                                     float(u_accept), float(u_resample))
        else:  # every draft accepted: the bonus token, sampled as a plain step samples it
            token = int(sampler(x[None], seen)[0])
            ok = False
        taken.append(token)
        if seen is not None:
            seen[0, token] = True
        if not ok:
            break
        if processor is not None:
            processor.accept(token)
    if processor is not None and len(taken) > 1:
        if not hasattr(processor, "rollback"):
            raise ScredgeError("this logits processor cannot be used with speculative "
                               "decoding", received=type(processor).__name__,
                               expected="a processor with rollback(n) (e.g. a grammar's)")
        processor.rollback(len(taken) - 1)
    return taken


# ---- the cache: back to the accepted prefix ---------------------------------------------
def rollback(decoder: Decoder, before: HostState, fed: np.ndarray, keep: Sequence[int],
             start: np.ndarray) -> None:
    """After `decoder` ran fed [B,T] from the state `before` at positions start [B]:
    leave it as if each row b had been fed only fed[b, :keep[b]] (1 <= keep[b] <= T)."""
    keep = np.asarray(keep, dtype=np.int64)
    T = fed.shape[1]
    if (keep == T).all():
        return
    c = decoder.runner.config
    window_ok = c.window is None or T <= c.window - 1
    if not c.scr_layers and window_ok:
        decoder.load_state(_cut(before, decoder.snapshot(), keep, T, c))
    else:
        decoder.load_state(_rerun(decoder.runner, before, fed, keep, start))


def _cut(before: HostState, after: HostState, keep: np.ndarray, T: int, c) -> HostState:
    """No SCR carries: each row's cache is its kept real slots, then its first keep[b] new
    keys (the last T slots of the returned cache), trimmed to W-1 and left-padded."""
    limit = None if c.window is None else c.window - 1
    rows = []
    for b, n_new in enumerate(keep.tolist()):
        real = int(before.mask[b].sum())
        total = real + n_new if limit is None else min(real + n_new, limit)
        arrays = {}
        for name, old in before.arrays.items():
            assert contract.is_kv(name), "a model with SCR carries is rolled back by a re-run"
            new = after.arrays[name]
            tail = new[b:b + 1, :, new.shape[2] - T:new.shape[2] - T + n_new]
            head = old[b:b + 1, :, old.shape[2] - real:]
            arrays[name] = np.concatenate([head, tail], axis=2)[:, :, -total:]
        rows.append(HostState(arrays, np.ones((1, total), dtype=np.int64)))
    return rows[0] if len(rows) == 1 else join_states(rows)


def _rerun(runner: Runner, before: HostState, fed: np.ndarray, keep: np.ndarray,
           start: np.ndarray) -> HostState:
    """Run each group of rows keeping the same count again from `before` on its kept
    tokens, then join the groups back in row order (SCR_SPEC section 3's join)."""


    groups: dict[int, list[int]] = {}
    for b, n in enumerate(keep.tolist()):
        groups.setdefault(n, []).append(b)
    states, order = [], []
    for n, rows in groups.items():
        dec = runner.decoder(len(rows))
        try:
            dec.load_state(select_rows(before, rows) if len(rows) < before.batch else before)
            dec.step(np.ascontiguousarray(fed[rows, :n]), positions(start[rows], len(rows), n))
            states.append(dec.snapshot())
        finally:
            dec.release()
        order += rows
    state = states[0] if len(states) == 1 else join_states(states)
    if order != sorted(order):
        state = select_rows(state, np.argsort(order).tolist())
    return state


# ---- the batching core's multi-token step -----------------------------------------------
class Speculation:
    """Speculative steps for one batch (runtime/batch.py's multi-token seam): a proposer
    per row, made when the row first waits with a chosen token, and the counts per row
    (`stats(row)`: proposed and accepted drafts, target calls, tokens taken)."""

    def __init__(self, spec: SpeculativeSpec) -> None:
        self.spec = spec
        self._rows: dict[int, tuple[object, object, dict]] = {}  # id(row) -> row, proposer, counts

    def stats(self, row) -> dict:
        entry = self._rows.get(id(row))
        return dict(entry[2]) if entry else {"proposed": 0, "accepted": 0, "calls": 0,
                                              "tokens": 0}

    def _proposer(self, row, pending: int):
        entry = self._rows.get(id(row))
        if entry is None or entry[0] is not row or entry[1] is None:
            prompt = [int(t) for t in row.prompt]
            if self.spec.method == "ngram":
                prop = NgramProposer(prompt + [pending], self.spec.max_n, self.spec.min_n)
            else:
                prop = DraftProposer(self.spec.draft, prompt, row.sampler)
            entry = (row, prop, {"proposed": 0, "accepted": 0, "calls": 0, "tokens": 0})
            self._rows[id(row)] = entry
        return entry[1], entry[2]

    def forget(self, keep_rows) -> None:
        """Close the proposers of rows no longer in the batch (a draft's decoder goes back);
        their counts stay readable."""
        live = {id(r) for r in keep_rows}
        for key, (row, prop, counts) in list(self._rows.items()):
            if key not in live and prop is not None:
                prop.close()
                self._rows[key] = (row, None, counts)

    def step(self, batch) -> list:
        """One verify call for every row of `batch` (rows waiting with chosen tokens): each
        row's proposal after its pending token, the accepted prefix plus one token taken
        through the batch's `_accept`, the cache rolled back to what was taken."""


        rows, pending, start = batch.rows, batch._pending, batch._position
        self.forget(rows)
        proposals = []
        for i, row in enumerate(rows):
            prop, counts = self._proposer(row, int(pending[i]))
            room = min(self.spec.k, row.max_tokens - row.generated - 1)
            proposals.append(prop.propose(room, int(pending[i])) if room > 0 and
                             not row.finished else ([], None))
        K = max(len(d) for d, _ in proposals)
        fed = np.repeat(pending[:, None], K + 1, axis=1).astype(np.int64)
        for i, (d, _) in enumerate(proposals):
            fed[i, 1:1 + len(d)] = d
        before = batch.decoder.snapshot() if K else None
        logits = batch.decoder.step(fed, positions(start, len(rows), K + 1))
        batch.steps += 1
        taken = [[int(pending[i])] if row.finished else
                 verify_row(logits[i], proposals[i][0], proposals[i][1], row.sampler,
                            row.seen, row.processor) for i, row in enumerate(rows)]
        keep = [len(t) for t in taken]
        if K:
            rollback(batch.decoder, before, fed, keep, start)
        batch._position = start + np.asarray(keep, dtype=np.int64)
        events = []
        for i, row in enumerate(rows):
            if row.finished:
                continue
            prop, counts = self._proposer(row, int(pending[i]))
            prop.accepted(int(pending[i]), taken[i], len(taken[i]) - 1)
            counts["proposed"] += len(proposals[i][0])
            counts["accepted"] += len(taken[i]) - 1
            event = batch._accept(row, taken[i])
            counts["calls"] += 1
            counts["tokens"] += event.accepted
            events.append(event)
        batch._pending = np.array([t[-1] for t in taken], dtype=np.int64)
        return events

    def close(self) -> None:
        self.forget(())
        self._rows.clear()
