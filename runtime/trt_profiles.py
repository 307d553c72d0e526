"""The two TensorRT optimisation profiles of an SCR decoder graph, and the limits they set.

One graph serves prefill and decode (SCR_SPEC section 3), but their shapes are far apart:
prefill has many tokens and no cache (T 1..max_prefill, P = 0), decode one token and a
cache up to its capacity (T = 1, P 0..cap-1 with cap = W-1 for a windowed model, or
`max_context` for window = null); `attention_mask` [B, P+T] spans P+T in each. One
profile spanning both would tune kernels for shapes that never occur, so the builder
makes two and the runner picks one per call. Pure functions of the config: the builder
records the result in the manifest, the runner reads its limits back from there.
Torch-free and TensorRT-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from scredge import contract
from scredge.config import SCRConfig
from scredge.errors import ScredgeError

PREFILL, DECODE = 0, 1  # profile indices
DEFAULT_MAX_BATCH = 4
DEFAULT_MAX_PREFILL = 512

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


def cache_capacity(config: SCRConfig, max_context: int | None) -> int:
    """Most cached positions a call may receive or return: W-1, or max_context (window=null).

    A windowed model's cache never holds more than W-1 positions, so `max_context` is
    refused there rather than silently ignored."""
    if config.window is not None:
        if max_context is not None:
            raise ScredgeError(
                "--max-context is only for models with window = null",
                received=f"max_context {max_context}, window {config.window}",
                expected="no --max-context: a windowed model's cache holds at most "
                         f"W-1 = {config.window - 1} positions",
                fix="drop --max-context")
        return config.window - 1
    if max_context is None or max_context < 1:
        raise ScredgeError(
            "a model with window = null needs --max-context (its cache grows with every token)",
            received=f"max_context {max_context}",
            expected="an integer >= 1: the most tokens one sequence may reach",
            fix="pass --max-context, e.g. --max-context 2048")
    return max_context


def default_max_prefill(config: SCRConfig, max_context: int | None) -> int:
    """512, or the context limit of a full-causal model when that is smaller."""
    if config.window is None and max_context is not None:
        return min(DEFAULT_MAX_PREFILL, max_context)
    return DEFAULT_MAX_PREFILL


def profiles(config: SCRConfig, max_batch: int = DEFAULT_MAX_BATCH,
             max_prefill: int | None = None, max_context: int | None = None) -> list[Profile]:
    """[prefill profile, decode profile], each {input name: (min, opt, max)}.

    Optimised for one sequence (opt batch 1), a full prefill and a full cache: the shapes
    a long generation spends its time in."""
    cap = cache_capacity(config, max_context)
    if max_prefill is None:
        max_prefill = default_max_prefill(config, max_context)
    for name, value in (("max_batch", max_batch), ("max_prefill", max_prefill)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScredgeError(f"--{name.replace('_', '-')} must be an integer >= 1",
                               received=repr(value))
    if config.window is None and max_prefill > cap:
        raise ScredgeError("--max-prefill exceeds --max-context", received=max_prefill,
                           expected=f"<= {cap}", fix=f"pass --max-prefill {cap} or less")
    decode_p = cap if config.window is not None else cap - 1  # P' = P+1 must fit in cap
    out = []
    for t, p in (((1, max_prefill, max_prefill), (0, 0, 0)),
                 ((1, 1, 1), (0, decode_p, decode_p))):
        b = (1, 1, max_batch)
        prof: Profile = {}
        for name in contract.GraphIO.for_config(config).inputs:
            if name in contract.TOKEN_INPUTS:
                prof[name] = tuple(zip(b, t))
            elif name == contract.ATTENTION_MASK:  # [B, P+T]
                prof[name] = tuple((bi, pi + ti) for bi, pi, ti in zip(b, p, t))
            else:
                prof[name] = tuple(contract.state_shape(config, name, bi, pi)
                                   for bi, pi in zip(b, p))
        out.append(prof)
    return out


@dataclass(frozen=True)
class Limits:
    """What an engine accepts, read back from its profiles: the runner checks every call
    against these before touching the GPU."""

    max_batch: int
    max_prefill: int
    cache: int  # most positions the cache holds (W-1, or max_context)
    windowed: bool

    @classmethod
    def from_profiles(cls, profs: list[Profile], config: SCRConfig) -> Limits:
        prefill, decode = profs[PREFILL], profs[DECODE]
        max_b, max_t = prefill[contract.INPUT_IDS][2]
        past = decode[contract.past_kv(0, "key")][2][2]
        windowed = config.window is not None
        return cls(max_b, max_t, past if windowed else past + 1, windowed)

    def check(self, batch: int, past: int, new: int) -> None:
        """Raise unless a call of `new` tokens on `past` cached ones fits the profiles."""
        if batch > self.max_batch:
            raise ScredgeError("batch exceeds the engine's optimisation profiles",
                               received=batch, expected=f"<= {self.max_batch}",
                               fix="rebuild with a larger --max-batch, or split the batch")
        if past == 0 and new > self.max_prefill:
            raise ScredgeError("prompt longer than the engine's prefill profile",
                               received=f"{new} tokens", expected=f"<= {self.max_prefill}",
                               fix="rebuild with a larger --max-prefill, or shorten the prompt")
        if not self.windowed and past + new > self.cache:
            raise ScredgeError("sequence exceeds the engine's context limit",
                               received=f"{past} cached + {new} new tokens",
                               expected=f"<= {self.cache} (built with --max-context)",
                               fix="rebuild with a larger --max-context")


def to_json(profs: list[Profile]) -> list[dict]:
    return [{k: [list(s) for s in v] for k, v in p.items()} for p in profs]


def from_json(data: list[dict]) -> list[Profile]:
    return [{k: tuple(tuple(s) for s in v) for k, v in p.items()} for p in data]
