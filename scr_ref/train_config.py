"""Training settings of `scredge train`: a typed, validated dataclass and the LR schedule.

Torch-free, like `scredge.config`, so the CLI can show defaults and refuse bad settings
without importing torch; `scredge.ref.train` re-exports `TrainConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from scredge.errors import ScredgeError

# Fields that change the weights a run ends with: a resumed run must keep them.
TRAJECTORY_FIELDS = ("steps", "batch_size", "seq_len", "lr", "min_lr", "warmup_steps",
                     "weight_decay", "grad_clip", "seed")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # windows per step
    seq_len: int = 256  # bytes per window (predicted positions)
    lr: float = 1e-3  # peak learning rate, after warmup
    min_lr: float = 1e-4  # end of the cosine decay
    warmup_steps: int | None = None  # linear warmup to lr; None: min(100, steps // 10)
    weight_decay: float = 0.1  # AdamW, matrices only (see scredge.ref.train)
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    seed: int = 0  # weight init, batch sampling
    eval_every: int = 100  # validation every this many steps (and at 0 and the end)
    eval_batches: int = 8  # validation batches of batch_size fixed windows
    checkpoint_every: int = 200  # write last.pt every this many steps (and at the end)
    log_every: int = 10  # a progress line every this many steps

    def __post_init__(self) -> None:
        if self.warmup_steps is None and is_int(self.steps):
            object.__setattr__(self, "warmup_steps", min(100, self.steps // 10))
        _validate(self)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warmup, cosine to min_lr."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.min_lr + (self.lr - self.min_lr) * cosine

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def _validate(c: TrainConfig) -> None:
    def bad(name: str, expected: str) -> None:
        raise ScredgeError(f"invalid training setting '{name}'", received=repr(getattr(c, name)),
                           expected=expected, fix=f"pass a valid --{name.replace('_', '-')}")

    for name in ("steps", "batch_size", "eval_every", "eval_batches", "checkpoint_every",
                 "log_every"):
        v = getattr(c, name)
        if not is_int(v) or v < 1:
            bad(name, "an integer >= 1")
    if not is_int(c.seq_len) or c.seq_len < 2:
        bad("seq_len", "an integer >= 2")
    if not is_int(c.seed) or c.seed < 0:
        bad("seed", "an integer >= 0")
    if not is_int(c.warmup_steps) or not 0 <= c.warmup_steps <= c.steps:
        bad("warmup_steps", f"an integer in 0..steps ({c.steps})")
    for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
        v = getattr(c, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            bad(name, "a finite number")
    if c.lr <= 0:
        bad("lr", "a number > 0")
    if not 0 <= c.min_lr <= c.lr:
        bad("min_lr", f"a number in [0, lr = {c.lr}]")
    if c.weight_decay < 0:
        bad("weight_decay", "a number >= 0")
    if c.grad_clip < 0:
        bad("grad_clip", "a number >= 0 (0 turns clipping off)")


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def defaults() -> dict[str, object]:
    """Every field's default, for help texts."""
    return {f.name: f.default for f in fields(TrainConfig)}
