"""KV and SCR state as named host arrays (SCR_SPEC section 3): the empty state for a first
call, and the next call's inputs from a call's outputs. Torch-free."""

from __future__ import annotations

import numpy as np

from scredge.config import SCRConfig


def empty_state(c: SCRConfig, batch: int, kv_dtype=np.float32) -> dict[str, np.ndarray]:
    """P = 0 caches and zero SCR carries for `batch` rows."""
    state: dict[str, np.ndarray] = {}
    for i in range(c.n_layers):
        for kv in ("key", "value"):
            state[f"past_key_values.{i}.{kv}"] = np.zeros(
                (batch, c.n_kv_heads, 0, c.head_dim), dtype=kv_dtype)
    for i in c.scr_layers:
        state[f"scr_past.{i}.num"] = np.zeros((batch, c.d_model), dtype=np.float32)
        state[f"scr_past.{i}.den"] = np.zeros((batch, 1), dtype=np.float32)
    return state


def past_name(output: str) -> str:
    """The input that takes a state output next call: present.* -> past_key_values.*,
    scr_present.* -> scr_past.*."""
    if output.startswith("scr_present."):
        return "scr_past." + output[len("scr_present."):]
    return "past_key_values." + output[len("present."):]


def state_from_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next call's state inputs from a call's outputs (other outputs are dropped)."""
    return {past_name(name): value for name, value in outputs.items()
            if name.startswith(("present.", "scr_present."))}
