"""scredge.ref: the reference PyTorch SCR model, the ground truth (needs the `ref` extra).

Names are resolved lazily so `import scredge.ref` itself never imports torch;
touching one without torch installed raises a ScredgeError naming the extra.
"""

from __future__ import annotations

import importlib

from scredge.deps import require

_EXPORTS = {
    "SCRForCausalLM": "model",
    "ModelState": "model",
    "build_model": "model",
    "init_weights": "model",
    "realign": "realign_op",
    "realign_reference": "realign_op",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "init_checkpoint": "checkpoint",
    "load_state_dict": "checkpoint",
    "read_config": "checkpoint",
    "prefill": "generation",
    "decode_step": "generation",
    "generate": "generation",
    "head_deviation": "attention_stats",
    "capture_attention": "attention_stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scredge.ref' has no attribute '{name}'")
    require("torch")
    return getattr(importlib.import_module(f"scredge.ref.{_EXPORTS[name]}"), name)
