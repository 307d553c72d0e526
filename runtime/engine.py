"""The application API: load an artifact folder once, generate from many threads.

    engine = Engine.load("artifacts/tiny")
    result = engine.generate("Once upon", max_new_tokens=64, temperature=0.8, seed=1)
    for piece in engine.stream("Once upon", max_new_tokens=64):
        print(piece, end="")

Every call gets its own decoder state and sampler, so one Engine serves concurrent callers
and the same seed gives the same tokens on every backend whose logits agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scredge.errors import ScredgeError
from scredge.runtime.generation import Generator, check_max_new_tokens
from scredge.runtime.loaders import Artifact, load_ort, open_artifact
from scredge.runtime.runners.base import Runner
from scredge.runtime.tokenizer import ByteTokenizer, StreamDecoder
from scredge.runtime.trt_loader import find_engine, load_trt_runner
from scredge.sampling import SamplingParams

RUNTIME_BACKENDS = ("ort", "trt")  # what runs a graph: onnxruntime, or a TensorRT engine
LOAD_CHOICES = ("auto", *RUNTIME_BACKENDS)


def check_backend_options(backend: str, cuda_graph: bool = False) -> None:
    """Refuse an unknown runtime backend, and CUDA graphs asked of onnxruntime."""
    if backend not in LOAD_CHOICES:
        raise ScredgeError("unknown backend", received=repr(backend),
                           expected=f"one of {list(LOAD_CHOICES)}")
    if cuda_graph and backend == "ort":
        raise ScredgeError("CUDA graph capture is a TensorRT runner feature",
                           received="backend 'ort' with cuda_graph",
                           expected="backend 'trt' or 'auto'",
                           fix="drop --cuda-graph, or use --backend trt")


@dataclass
class GenerationResult:
    ids: list[int]  # generated ids only, stop sequence excluded
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    timing: dict = field(default_factory=dict)  # seconds: ttft, prefill, decode, total


class Engine:
    def __init__(self, runner: Runner, artifact: Artifact | None = None) -> None:
        self.runner = runner
        self.artifact = artifact
        self.config = runner.config
        self.tokenizer = ByteTokenizer() if self.config.vocab_size == 256 else None

    @property
    def backend(self) -> str:
        return self.runner.backend

    def close(self) -> None:
        """Free what the backend keeps between generations (the TensorRT runner's idle
        decoders: execution contexts and device caches) before the Engine is collected."""
        self.runner.close()

    @classmethod
    def load(cls, folder: str | Path, backend: str = "auto", device: str = "auto",
             threads: int | None = None, cuda_graph: bool = False) -> Engine:
        """Open and check an artifact folder and pick a backend.

        backend: 'ort' (onnxruntime), 'trt' (the folder's TensorRT engine for this GPU and
        TensorRT version; ScredgeError saying why when there is none), or 'auto' (that
        engine when it exists, TensorRT imports and a GPU is present, else onnxruntime;
        device='cpu' always means onnxruntime).
        cuda_graph: TensorRT only: replay the steady decode step from CUDA graphs (ignored
        when 'auto' picks onnxruntime, refused with backend='ort').
        """
        check_backend_options(backend, cuda_graph)
        artifact = open_artifact(folder)
        if backend == "trt" or (backend == "auto" and device != "cpu"
                                and find_engine(artifact) is not None):
            return cls(load_trt_runner(artifact, cuda_graph=cuda_graph), artifact)
        return cls(load_ort(artifact, device=device, threads=threads), artifact)

    # ---- inputs ---------------------------------------------------------------------
    def encode(self, prompt) -> np.ndarray:
        """str | [str] | [int] | [[int]] | ndarray -> [B,T] ids (rows of equal length)."""
        if _is_text(prompt):
            if self.tokenizer is None:
                raise ScredgeError("text prompts need the byte tokenizer (vocab_size 256)",
                                   received=f"vocab_size {self.config.vocab_size}",
                                   fix="pass token ids instead of text")
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            for t in texts:
                _utf8(t, "prompt")
            rows = [self.tokenizer.encode(t) for t in texts]
        elif isinstance(prompt, np.ndarray) and prompt.ndim in (1, 2):
            rows = prompt.reshape(-1, prompt.shape[-1]).tolist()
        elif isinstance(prompt, (list, tuple)):
            rows = [list(r) for r in prompt] if _is_batch(prompt) else [list(prompt)]
        else:
            raise ScredgeError("prompt must be text or token ids", received=repr(prompt)[:80],
                               expected="str, list of str, list of ids, or [B,T] ids")
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ScredgeError("batched prompts must have equal lengths",
                               received=sorted(lengths),
                               expected="one length (SCR_SPEC section 3: rows share T and P)",
                               fix="pad the prompts yourself or generate them separately")
        if not rows or 0 in lengths:
            raise ScredgeError("empty prompt", expected="at least one token",
                               fix="pass a non-empty prompt")
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                   for r in rows for t in r):
            raise ScredgeError("prompt ids must be integers", received=repr(rows[0][:8]))
        try:
            return np.asarray(rows, dtype=np.int64)
        except OverflowError as exc:
            raise ScredgeError("prompt token id outside the vocabulary",
                               received="an id beyond int64",
                               expected=f"ids in 0..{self.config.vocab_size - 1}") from exc

    def _stops(self, stop) -> tuple[set[int], list[bytes]]:
        """stop: None, one stop (a string or a token id) or a sequence of them. An empty
        string is refused however it comes (`stop=""` and `stop=[""]` alike): it would
        match before any token."""
        if stop is None:
            return set(), []
        entries = [stop] if isinstance(stop, (str, int, np.integer)) else stop
        if not isinstance(entries, (list, tuple, set, frozenset)):
            raise ScredgeError("stop must be a string, a token id, or a list of them",
                               received=repr(stop)[:80])
        if not all(_is_id(s) or (isinstance(s, str) and s) for s in entries):
            raise ScredgeError("stop entries must be token ids or non-empty strings",
                               received=repr(list(entries))[:200],
                               expected='e.g. stop="\\n\\n" or stop=["User:", 10]',
                               fix="drop empty strings (no stop at all is stop=())")
        ids = {int(s) for s in entries if _is_id(s)}
        texts = [s for s in entries if isinstance(s, str)]
        return ids, [_utf8(s, "stop string") for s in texts]

    # ---- generation -----------------------------------------------------------------
    def generator(self, prompt=None, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = 0,
                  max_new_tokens: int = 1_000_000, stop_ids: Sequence[int] = ()) -> Generator:
        """A stateful Generator on this engine's runner, optionally with a prompt appended."""
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        gen = Generator(self.runner, params, seed, max_new_tokens, stop_ids)
        if prompt is not None:
            gen.append(self.encode(prompt))
        return gen

    def generate(self, prompt, max_new_tokens: int = 128, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed: int | None = 0, stop: Sequence[str | int] = ()
                 ) -> GenerationResult | list[GenerationResult]:
        """One prompt -> one result; a list of equal-length prompts -> a list of results."""
        results = list(self._run(prompt, max_new_tokens, temperature, top_k, top_p,
                                 repetition_penalty, seed, stop, stream=False))
        return results[-1] if _is_batch(prompt) else results[-1][0]

    def stream(self, prompt, max_new_tokens: int = 128, *, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               seed: int | None = 0, stop: Sequence[str | int] = ()) -> Iterator[str]:
        """Text pieces of one prompt's continuation, never splitting a UTF-8 character."""
        if self.tokenizer is None:
            raise ScredgeError("streaming text needs the byte tokenizer (vocab_size 256)",
                               received=f"vocab_size {self.config.vocab_size}")
        for piece in self._run(prompt, max_new_tokens, temperature, top_k, top_p,
                               repetition_penalty, seed, stop, stream=True):
            if isinstance(piece, str):
                yield piece

    def _run(self, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
             seed, stop, stream: bool):
        n = check_max_new_tokens(max_new_tokens)
        stop_ids, stop_texts = self._stops(stop)
        rows = self.encode(prompt)
        if stream and rows.shape[0] != 1:
            raise ScredgeError("stream() takes one prompt", received=f"{rows.shape[0]} prompts",
                               fix="use generate() for batches")
        t0 = time.perf_counter()
        gen = self.generator(None, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, seed=seed,
                             max_new_tokens=max(n, 1))  # stops are handled below, per row
        try:
            gen.append(rows)
            t_prefill = time.perf_counter() - t0
            B = rows.shape[0]
            out: list[list[int]] = [[] for _ in range(B)]
            tails = [b"" for _ in range(B)]  # recent bytes, for stop strings
            reason = ["length"] * B
            live = np.ones(B, dtype=bool)
            decoder = StreamDecoder() if stream else None
            held: list[int] = []  # streamed ids held back while they may begin a stop string
            ttft = None
            longest_stop = max((len(s) for s in stop_texts), default=0)
            for _ in range(n):
                token = gen.next_token()
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                for b in np.flatnonzero(live):
                    t = int(token[b])
                    if t in stop_ids:
                        live[b], reason[b] = False, "stop"
                        continue
                    out[b].append(t)
                    if stop_texts:
                        tails[b] = (tails[b] + bytes((t,)))[-longest_stop:]
                        hit = next((s for s in stop_texts if tails[b].endswith(s)), None)
                        if hit is not None:
                            del out[b][len(out[b]) - len(hit):]
                            live[b], reason[b] = False, "stop"
                            if stream:
                                held.clear()
                            continue
                    if stream:
                        held.append(t)
                        keep = _partial_stop_len(tails[b], stop_texts)
                        while len(held) > keep:
                            piece = decoder.push(held.pop(0))
                            if piece:
                                yield piece
                if not live.any():
                    break
            if stream:
                for t in held:
                    piece = decoder.push(t)
                    if piece:
                        yield piece
                tail = decoder.flush()
                if tail:
                    yield tail
            total = time.perf_counter() - t0
            new_tokens = gen.generated
            timing = {"ttft_s": ttft or 0.0, "prefill_s": t_prefill, "total_s": total,
                      "decode_s": total - t_prefill,
                      "decode_tokens_per_s": (new_tokens - 1) / (total - (ttft or total))
                      if new_tokens > 1 and ttft is not None and total > ttft else 0.0}
            decode = self.tokenizer.decode if self.tokenizer else (lambda ids: "")
            yield [GenerationResult(out[b], decode(out[b]), reason[b], rows.shape[1], timing)
                   for b in range(B)]
        except GeneratorExit:  # the caller stopped reading a stream: the decoder is sound
            gen.close()
            raise
        except BaseException:  # a failed call may leave it unsound: free it, do not reuse
            gen.close(reuse=False)
            raise
        else:
            gen.close()


def _is_id(s) -> bool:
    return isinstance(s, (int, np.integer)) and not isinstance(s, bool)


def _utf8(text: str, what: str) -> bytes:
    """`text` as UTF-8; a lone surrogate (which no UTF-8 text holds) is a ScredgeError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ScredgeError(f"{what} is not valid Unicode text",
                           received=f"{exc.object[exc.start:exc.end]!a} at index {exc.start}",
                           expected="text without lone surrogates (U+D800..U+DFFF)",
                           fix="decode your input with errors='replace', or pass token ids"
                           ) from exc


def _is_text(prompt) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and bool(prompt)
                                       and all(isinstance(p, str) for p in prompt))


def _is_batch(prompt) -> bool:
    """A list of texts, a [B,T] array, or a list of id sequences."""
    if isinstance(prompt, str):
        return False
    if isinstance(prompt, np.ndarray):
        return prompt.ndim == 2
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(
        isinstance(p, (str, list, tuple, np.ndarray)) for p in prompt)


def _partial_stop_len(tail: bytes, stops: list[bytes]) -> int:
    """How many trailing bytes could still be the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(tail)), best, -1):
            if tail.endswith(s[:k]):
                best = k
                break
    return best
