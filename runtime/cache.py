"""KV and SCR state as named host arrays (SCR_SPEC section 3): the empty state for a first
call, and the next call's inputs from a call's outputs. Torch-free."""

from __future__ import annotations

import numpy as np

from scredge import contract
from scredge.config import SCRConfig


def empty_state(c: SCRConfig, batch: int, kv_dtype=np.float32) -> dict[str, np.ndarray]:
    """P = 0 caches and zero SCR carries for `batch` rows."""
    return {name: np.zeros(contract.state_shape(c, name, batch, 0),
                           dtype=contract.tensor_dtype(name, kv_dtype))
            for name in contract.GraphIO.for_config(c).state_inputs}


def state_from_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next call's state inputs from a call's outputs (other outputs are dropped)."""
    return {contract.past_name(name): value for name, value in outputs.items()
            if contract.is_state_output(name)}
