"""One interface for every backend (Polygraphy's runner idea): `infer(feed) -> outputs` on
host arrays, input metadata, the last inference time, and a stateful `Decoder` that keeps
the KV and SCR state in the backend's own buffers between calls.

The base class validates a feed once for every backend; backends implement `_infer` and,
when they can keep state on the device, their own `Decoder`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from scredge.config import SCRConfig
from scredge.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS
from scredge.errors import ScredgeError
from scredge.runtime.cache import (
    HostState,
    empty_state,
    feed_mask,
    join_states,
    select_rows,
    state_from_outputs,
    trim_mask,
)


@dataclass(frozen=True)
class TensorMeta:
    dtype: np.dtype
    shape: tuple[int | str, ...]  # str = symbolic dimension


class Runner(ABC):
    """A loaded model that runs feeds. Thread-safe: `infer` and decoders may be used from
    several threads at once (each decoder by one thread)."""

    backend: str = "?"

    def __init__(self, config: SCRConfig, kv_dtype: np.dtype) -> None:
        self.config = config
        self.kv_dtype = np.dtype(kv_dtype)
        self.last_inference_time: float | None = None
        self._inputs: dict[str, TensorMeta] = {}  # set by each backend from its model
        self._outputs: list[str] = []

    @property
    def input_metadata(self) -> dict[str, TensorMeta]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    @abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call on host arrays; returns every output by name."""
        self.check_feed(feed)
        t0 = time.perf_counter()
        out = self._infer(feed)
        self.last_inference_time = time.perf_counter() - t0
        return out

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        meta = self.input_metadata
        missing, extra = sorted(set(meta) - set(feed)), sorted(set(feed) - set(meta))
        if missing or extra:
            raise ScredgeError("feed names do not match the model's inputs",
                               received=f"missing {missing}, unexpected {extra}",
                               expected=f"exactly {list(meta)}")
        for name, m in meta.items():
            a = feed[name]
            if a.dtype != m.dtype or a.ndim != len(m.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(m.shape, a.shape)):
                raise ScredgeError(f"feed '{name}' has the wrong dtype or shape",
                                   received=f"{a.dtype} {list(a.shape)}",
                                   expected=f"{m.dtype} {list(m.shape)}")

    def decoder(self, batch: int) -> Decoder:
        """A fresh decoding state for `batch` rows (P = 0, empty SCR carry)."""
        return HostDecoder(self, batch)

    def limits_check(self, batch: int, past: int) -> None:
        """Refuse a joined batch the backend cannot run (nothing, unless overridden)."""
        return None

    def cuda_graph_status(self) -> str | None:
        """What the newest decoder did with CUDA graphs; None for a backend without them."""
        return None

    def close(self) -> None:
        """Free what the backend keeps between generations (nothing, unless overridden)."""
        return None


class Decoder(ABC):
    """Calls the model chunk by chunk, threading its state: `step(ids, positions) -> logits`.

    The decoder keeps the cache's `attention_mask` [B,P] on the host (SCR_SPEC section 3,
    v2) and feeds the graph that mask plus T ones every call. `join` and `leave` change
    which sequences the batch holds between two steps: a server adds a prefilled sequence
    to a running batch with `batch.join(new)`, and drops a finished one with
    `batch.leave([row])`; every row keeps exactly the logits it would get alone.
    """

    def __init__(self, runner: Runner, batch: int) -> None:
        self.runner = runner
        self.batch = batch
        self.past = 0  # P, cached positions
        # the cache's mask [B,P] (0 = a pad slot left by a join), or None while every slot
        # is real (no join): then nothing about the mask is built or sent per token
        self._mask: np.ndarray | None = None
        self.last_run_s = 0.0  # the backend's own time in the last step (overhead accounting)
        self.released = False

    @abstractmethod
    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """ids, positions [B,T] int64 -> logits [B,T,V] float32 (host). Positions are each
        row's own absolute ones (rows joined at different lengths differ)."""

    @property
    def mask(self) -> np.ndarray:
        """The cache's attention mask [B,P] int64 (1 = real token, 0 = pad)."""
        if self._mask is None:
            return np.ones((self.batch, self.past), dtype=np.int64)
        return self._mask

    @property
    def padded(self) -> bool:
        """Whether the cache holds pad slots (rows joined at unequal lengths)."""
        return self._mask is not None

    def _next_mask(self, new: int) -> np.ndarray:
        """This call's attention_mask [B,P+T]; the cache's mask moves on to its last P'."""
        if self._mask is None:
            return np.ones((self.batch, self.past + new), dtype=np.int64)
        full = feed_mask(self._mask, new)
        kept = trim_mask(full, self.runner.config.present_len(self.past, new))
        self._mask = None if kept.all() else kept  # the last pad has left the cache
        return full

    # ---- the batch's membership (SCR_SPEC section 3's join) -----------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        """The state inputs (past_key_values.*, scr_past.*) the next call reads, on the host."""
        raise self._no_join()

    def _load_arrays(self, arrays: dict[str, np.ndarray], batch: int) -> None:
        """Make `arrays` (host, `batch` rows) the state the next call reads."""
        raise self._no_join()

    def _no_join(self) -> ScredgeError:
        return ScredgeError("this decoder cannot hand over its state",
                            received=type(self).__name__,
                            expected="a runner's decoder (onnxruntime, TensorRT, host)",
                            fix="prefill rows of unequal length on a backend's own runner")

    def host_state(self) -> HostState:
        """The whole state (arrays and cache mask) copied to the host."""
        self._check_live()
        return HostState(self._state_arrays(), self.mask.copy())

    def snapshot(self) -> HostState:
        """The state as it is now, to `load_state` again later (a speculative step rolls
        back to it). Like `host_state`, but a backend whose state arrays are never written
        again once made (fresh host arrays per call) hands them over without a copy."""
        return self.host_state()

    def load_state(self, state: HostState) -> None:
        """Continue from `state` (its rows, P and mask) at the next step."""
        self._check_live()
        self.runner.limits_check(state.batch, state.past)
        self._load_arrays(state.arrays, state.batch)
        self.batch, self.past = state.batch, state.past
        self._mask = None if state.mask.all() else state.mask.astype(np.int64)

    def join(self, *others: Decoder) -> None:
        """Append the rows of `others` (decoders of the same runner, e.g. a prompt prefilled
        alone) after this batch's rows; they are released. Caches are left-padded to the
        longest P with mask 0 there and SCR carries stacked (SCR_SPEC section 3)."""
        for other in others:
            if other is self or other.runner is not self.runner:
                raise ScredgeError("join() takes other decoders of the same runner",
                                   received="itself" if other is self else "another runner's",
                                   expected="a decoder from this runner's decoder(batch)")
            other._check_live()
        state = join_states([self.host_state(), *(o.host_state() for o in others)])
        self.load_state(state)
        for other in others:
            other.release()

    def select(self, rows) -> None:
        """Keep the rows `rows` (indices into this batch, in the order given)."""
        rows = [int(r) for r in rows]
        if not rows or any(not 0 <= r < self.batch for r in rows) or len(set(rows)) != len(rows):
            raise ScredgeError("invalid rows to keep", received=rows,
                               expected=f"distinct indices in 0..{self.batch - 1}, at least one",
                               fix="release() the decoder when no row is left")
        self.load_state(select_rows(self.host_state(), rows))

    def leave(self, rows) -> None:
        """Drop the rows `rows` (finished sequences): they are never computed again."""
        gone = {int(r) for r in rows}
        self.select([r for r in range(self.batch) if r not in gone])

    def _check_live(self) -> None:
        if self.released:
            raise ScredgeError("this decoder was released or closed",
                               received="a call on a released decoder",
                               expected="a decoder in use",
                               fix="take a new one with runner.decoder(batch)")

    def release(self) -> None:
        """The caller is done with this decoder (a backend may reuse its buffers for the
        next one); it must not be stepped again."""
        self.released = True  # host state: nothing to give back, the GC frees it

    def close(self) -> None:
        """Free this decoder's state now instead of handing it back (after a failure)."""
        self.release()


class HostDecoder(Decoder):
    """Portable decoder: state as host arrays, through `Runner.infer`."""

    def __init__(self, runner: Runner, batch: int) -> None:
        super().__init__(runner, batch)
        self.state = empty_state(runner.config, batch, runner.kv_dtype)

    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        mask = self._next_mask(ids.shape[1])
        out = self.runner.infer({INPUT_IDS: ids, POSITION_IDS: positions,
                                 ATTENTION_MASK: mask, **self.state})
        self.last_run_s = self.runner.last_inference_time
        self.state = state_from_outputs(out)
        self.past = self.runner.config.present_len(self.past, ids.shape[1])
        return out[LOGITS]

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.state)

    def snapshot(self) -> HostState:
        self._check_live()
        return HostState(dict(self.state), self.mask.copy())  # each call makes new arrays

    def _load_arrays(self, arrays: dict[str, np.ndarray], batch: int) -> None:
        self.state = dict(arrays)
