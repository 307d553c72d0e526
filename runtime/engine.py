"""The application API: load an artifact folder once, generate from many threads.

    engine = Engine.load("artifacts/tiny")
    result = engine.generate("Once upon", max_new_tokens=64, temperature=0.8, seed=1)
    for piece in engine.stream("Once upon", max_new_tokens=64):
        print(piece, end="")
    reply = engine.chat([{"role": "user", "content": "Hi"}], max_new_tokens=64)  # its template

Text goes through the artifact's tokenizer (its Hugging Face tokenizer.json when it carries
one, else UTF-8 bytes for a 256-token vocabulary); generation stops on the tokenizer's eos
ids unless ignore_eos=True.

Every call gets its own decoder state and sampler, so one Engine serves concurrent callers
and the same seed gives the same tokens on every backend whose logits agree.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scredge.errors import ScredgeError
from scredge.runtime.batch import Batch, Request
from scredge.runtime.decoding import check_max_new_tokens
from scredge.runtime.generation import Generator
from scredge.runtime.loaders import Artifact, load_ort, open_artifact
from scredge.runtime.runners.base import Runner
from scredge.runtime.speculative import (
    DEFAULT_K,
    Speculation,
    SpeculativeSpec,
    check_draft,
    check_k,
)
from scredge.runtime.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from scredge.runtime.trt_loader import find_engine, load_trt_runner
from scredge.sampling import SamplingParams, row_seeds

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
        self.tokenizer: Tokenizer | None = (
            load_tokenizer(artifact) if artifact is not None
            else ByteTokenizer() if self.config.vocab_size == 256 else None)
        self._lock = threading.Lock()
        self._grammars = None  # runtime.constrained.Grammars, built on first use (~1 s)
        self._compiled: dict[tuple, str] = {}  # compiled grammars, by request
        self._drafts: dict[str, Engine] = {}  # draft models loaded by folder

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def realign_kernel(self) -> str | None:
        """What runs the `scr.Realign` nodes on onnxruntime: 'custom-op' (the kernel library)
        or 'function' (the graph's function body); None for a TensorRT engine."""
        realign = getattr(self.runner, "realign", None)
        return realign.kind if realign is not None else None

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
        rows = self.encode_rows(prompt)
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ScredgeError("encode() needs prompts of equal length",
                               received=sorted(lengths), expected="one length",
                               fix="use encode_rows(); generate() takes any mix of lengths")
        return np.asarray(rows, dtype=np.int64)

    def encode_rows(self, prompt) -> list[list[int]]:
        """str | [str] | [int] | [[int]] | ndarray -> one id list per prompt, any lengths."""
        if _is_text(prompt):
            self._need_tokenizer("text prompts")
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
        if not rows or 0 in lengths:
            raise ScredgeError("empty prompt", expected="at least one token",
                               fix="pass a non-empty prompt")
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                   for r in rows for t in r):
            raise ScredgeError("prompt ids must be integers", received=repr(rows[0][:8]))
        for r in rows:
            try:
                np.asarray(r, dtype=np.int64)
            except OverflowError as exc:
                raise ScredgeError("prompt token id outside the vocabulary",
                                   received="an id beyond int64",
                                   expected=f"ids in 0..{self.config.vocab_size - 1}") from exc
        return rows

    def _need_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise ScredgeError(f"{what} need a tokenizer, and this artifact has none",
                               received=f"vocab_size {self.config.vocab_size}, no tokenizer.json",
                               expected="a Hugging Face tokenizer.json in the artifact, or the "
                                        "byte tokenizer (vocab_size 256)",
                               fix="pass token ids instead, or export with --from-llama from a "
                                   "folder holding tokenizer.json")
        return self.tokenizer

    def _stops(self, stop, ignore_eos: bool) -> tuple[set[int], list[str]]:
        """Stop ids (the tokenizer's eos ids unless ignore_eos, and any ids given) and stop
        strings. stop: None, one stop (a string or a token id) or a sequence of them. An
        empty string is refused however it comes (`stop=""` and `stop=[""]` alike): it
        would match before any token."""
        entries = () if stop is None else (
            [stop] if isinstance(stop, (str, int, np.integer)) else stop)
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
        for s in texts:
            _utf8(s, "stop string")  # a lone surrogate is refused here
        if texts:
            self._need_tokenizer("stop strings")
        if not ignore_eos and self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_ids)
        return ids, texts

    # ---- generation -----------------------------------------------------------------
    def generator(self, prompt=None, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, repetition_penalty: float = 1.0, seed=0,
                  max_new_tokens: int = 1_000_000, stop_ids: Sequence[int] = ()) -> Generator:
        """A stateful Generator on this engine's runner, optionally with a prompt (or prompts
        of any lengths) appended. `seed`: an int or None for every row, or one per row."""
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        gen = Generator(self.runner, params, seed, max_new_tokens, stop_ids)
        if prompt is not None:
            rows = self.encode_rows(prompt)
            gen.append(rows if len({len(r) for r in rows}) > 1 else np.asarray(rows, np.int64))
        return gen

    def requests(self, prompt, max_new_tokens: int = 128, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed=0, stop: Sequence[str | int] = (), ignore_eos: bool = False,
                 tag: object = None, response_format=None, grammar=None) -> list[Request]:
        """The batching core's requests for `prompt` (one per prompt), as generate() reads
        its arguments: what a caller driving `runtime.batch.Batch` itself admits. With a
        grammar each row gets its own constraint (runtime/constrained.py)."""
        n = check_max_new_tokens(max_new_tokens)
        stop_ids, stop_texts = self._stops(stop, ignore_eos)
        rows = self.encode_rows(prompt)
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        seeds = row_seeds(seed, len(rows))
        compiled = self.compile_grammar(response_format, grammar)
        return [Request(row, params, s, n, stop_ids, stop_texts, tag=tag,
                        logits_processor=None if compiled is None else self.constraint(compiled))
                for row, s in zip(rows, seeds)]

    def batch(self, speculative: SpeculativeSpec | None = None) -> Batch:
        """An empty batch of the batching core on this engine's runner and tokenizer;
        `speculative` (see `speculation`): its rows decode speculatively."""
        return Batch(self.runner, self.tokenizer,
                     speculation=None if speculative is None else Speculation(speculative))

    # ---- constrained output and speculative decoding --------------------------------
    def compile_grammar(self, response_format=None, grammar=None) -> str | None:
        """The llguidance grammar of OpenAI's `response_format` or a `Grammar` (or Lark
        text), compiled against this artifact's tokenizer (cached); None for free text.
        ScredgeError for an invalid schema or grammar, or one the tokenizer cannot spell."""
        from scredge.runtime.constrained import Grammars, grammar_from_request

        wanted = grammar_from_request(response_format, grammar)
        if wanted is None:
            return None
        self._need_tokenizer("constrained output")
        key = (wanted.kind, wanted.source if isinstance(wanted.source, (str, type(None)))
               else json.dumps(wanted.source, sort_keys=True, default=str))
        with self._lock:
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer, self.config.vocab_size)
            compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._grammars.compile(wanted)
            with self._lock:
                if len(self._compiled) >= 64:
                    self._compiled.pop(next(iter(self._compiled)))
                self._compiled[key] = compiled
        return compiled

    def constraint(self, compiled: str):
        """A fresh row state (a logits processor) of a grammar from `compile_grammar`."""
        return self._grammars.constraint(compiled)

    def speculation(self, speculative, k: int = DEFAULT_K) -> SpeculativeSpec | None:
        """What `speculative=` names: None, 'ngram' (prompt lookup), a draft model (an
        Engine, or its artifact folder, loaded once on this engine's backend) with this
        engine's tokenizer and vocabulary, or a SpeculativeSpec as it is. `k` is checked
        even when nothing speculates (a bad value is refused, never ignored)."""
        check_k(k)
        if speculative is None or isinstance(speculative, SpeculativeSpec):
            return speculative
        if isinstance(speculative, str) and speculative == "ngram":
            return SpeculativeSpec("ngram", k)
        if isinstance(speculative, (str, Path)):
            if not Path(speculative).is_dir():
                raise ScredgeError("invalid speculative", received=repr(str(speculative))[:120],
                                   expected="'ngram', or a draft model's artifact folder",
                                   fix="pass speculative='ngram' or an existing folder")
            key = str(Path(speculative).resolve())
            with self._lock:
                draft = self._drafts.get(key)
            if draft is None:
                draft = Engine.load(speculative, backend=self.backend)
                with self._lock:
                    self._drafts[key] = draft
            speculative = draft
        if not isinstance(speculative, Engine):
            raise ScredgeError("invalid speculative", received=repr(speculative)[:80],
                               expected="'ngram', a draft Engine or its artifact folder")
        name = str(speculative.artifact.folder) if speculative.artifact else "the draft"
        check_draft(self.config, self.tokenizer, speculative.config, speculative.tokenizer,
                    name)
        return SpeculativeSpec("draft", k, draft=speculative.runner)

    def generate(self, prompt, max_new_tokens: int = 128, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed=0, stop: Sequence[str | int] = (), ignore_eos: bool = False,
                 response_format=None, grammar=None, speculative=None,
                 speculative_k: int = DEFAULT_K) -> GenerationResult | list[GenerationResult]:
        """One prompt -> one result; a list of prompts (any lengths) -> a list of results.

        Every row equals its prompt generated alone with its seed (`seed` for every row, or
        a list of one per prompt); a row that finishes leaves the batch, so it costs
        nothing more. Generation stops at a stop id or string (excluded from the result),
        and at the tokenizer's eos ids unless ignore_eos. A result's text is exactly the
        concatenation of the pieces stream() gives for it.

        response_format: OpenAI's ({"type": "json_object"}, {"type": "json_schema",
        "json_schema": {"schema": {...}}}); grammar: a `constrained.Grammar` (JSON Schema,
        regex, Lark) or Lark text: the output follows it (docs/constrained-and-speculative.md).
        speculative: 'ngram' or a draft model (Engine or folder, same tokenizer), proposing
        `speculative_k` tokens a step; greedy output is unchanged, sampled output keeps
        its distribution."""
        requests = self.requests(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, repetition_penalty=repetition_penalty,
                                 seed=seed, stop=stop, ignore_eos=ignore_eos,
                                 response_format=response_format, grammar=grammar)
        spec = self.speculation(speculative, speculative_k)
        results = list(self._run(requests, stream=False, speculative=spec))[-1]
        return results if _is_batch(prompt) else results[0]

    def stream(self, prompt, max_new_tokens: int = 128, *, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               seed=0, stop: Sequence[str | int] = (), ignore_eos: bool = False,
               response_format=None, grammar=None, speculative=None,
               speculative_k: int = DEFAULT_K) -> Iterator[str]:
        """Text pieces of one prompt's continuation, never splitting a UTF-8 character;
        the keyword arguments are generate()'s."""
        self._need_tokenizer("streamed text")
        requests = self.requests(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, repetition_penalty=repetition_penalty,
                                 seed=seed, stop=stop, ignore_eos=ignore_eos,
                                 response_format=response_format, grammar=grammar)
        spec = self.speculation(speculative, speculative_k)
        if len(requests) != 1:
            raise ScredgeError("stream() takes one prompt", received=f"{len(requests)} prompts",
                               fix="use generate() for batches")
        for piece in self._run(requests, stream=True, speculative=spec):
            if isinstance(piece, str):
                yield piece

    def _run(self, requests: list[Request], stream: bool,
             speculative: SpeculativeSpec | None = None):
        """The batching core's loop: text pieces (stream), then the list of results."""
        t0 = time.perf_counter()
        batch = self.batch(speculative)
        try:
            events = batch.admit(requests)
            ttft = time.perf_counter() - t0
            rows = list(batch.rows)
            while True:
                if stream:
                    yield from (ev.text for ev in events if ev.text)
                batch.retire()  # a finished row leaves: its slot is not decoded further
                if not batch.rows:
                    break
                events = batch.step()
        except GeneratorExit:  # the caller stopped reading a stream: the decoder is sound
            batch.close()
            raise
        except BaseException:  # a failed call may leave it unsound: free it, do not reuse
            batch.close(reuse=False)
            raise
        total = time.perf_counter() - t0
        new_tokens = max((r.generated for r in rows), default=0)  # the longest row's
        timing = {"ttft_s": ttft, "prefill_s": ttft, "total_s": total, "decode_s": total - ttft,
                  "decode_calls": batch.steps,
                  "decode_tokens_per_s": (new_tokens - 1) / (total - ttft)
                  if new_tokens > 1 and total > ttft else 0.0}
        spec = batch.speculation
        yield [GenerationResult(r.ids, r.text, r.finish_reason, len(r.prompt),
                                timing if spec is None else {**timing,
                                                             "speculative": spec.stats(r)})
               for r in rows]

    # ---- chat -----------------------------------------------------------------------
    def render_chat(self, messages, **template_kwargs) -> str:
        """The artifact's chat template applied to `messages` with the assistant's turn
        opened, as transformers' apply_chat_template(add_generation_prompt=True)."""
        from scredge.runtime.chat import render_chat

        tok = self._need_tokenizer("chat messages")
        return render_chat(tok.chat_template, messages,
                           getattr(tok, "special_tokens", {}), **template_kwargs)

    def chat_ids(self, messages, **template_kwargs) -> list[int]:
        """The rendered chat as ids; the template writes its own special tokens, so the
        tokenizer adds none (as apply_chat_template(tokenize=True))."""
        text = self.render_chat(messages, **template_kwargs)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat(self, messages, max_new_tokens: int = 128, **kwargs) -> GenerationResult:
        """The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]); takes
        generate()'s keyword arguments."""
        return self.generate(self.chat_ids(messages), max_new_tokens, **kwargs)

    def chat_stream(self, messages, max_new_tokens: int = 128, **kwargs) -> Iterator[str]:
        """chat(), streamed as stream() streams."""
        return self.stream(self.chat_ids(messages), max_new_tokens, **kwargs)


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
