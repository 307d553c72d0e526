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
from scredge.contract import INPUT_IDS, LOGITS, POSITION_IDS
from scredge.errors import ScredgeError
from scredge.runtime.cache import empty_state, state_from_outputs


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

    def cuda_graph_status(self) -> str | None:
        """What the newest decoder did with CUDA graphs; None for a backend without them."""
        return None

    def close(self) -> None:
        """Free what the backend keeps between generations (nothing, unless overridden)."""
        return None


class Decoder(ABC):
    """Calls the model chunk by chunk, threading its state: `step(ids, positions) -> logits`."""

    def __init__(self, runner: Runner, batch: int) -> None:
        self.runner = runner
        self.batch = batch
        self.past = 0  # P, cached positions
        self.last_run_s = 0.0  # the backend's own time in the last step (overhead accounting)
        self.released = False

    @abstractmethod
    def step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """ids, positions [B,T] int64 -> logits [B,T,V] float32 (host)."""

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
        out = self.runner.infer({INPUT_IDS: ids, POSITION_IDS: positions, **self.state})
        self.last_run_s = self.runner.last_inference_time
        self.state = state_from_outputs(out)
        self.past = self.runner.config.present_len(self.past, ids.shape[1])
        return out[LOGITS]
