"""scredge.runtime: torch-free inference over artifact folders.

Imports numpy only at import time; onnxruntime (or TensorRT) is imported when a runner is
loaded. Never torch.

    from scredge.runtime import Engine
    engine = Engine.load("artifacts/tiny")
    print(engine.generate("Hello", max_new_tokens=32, temperature=0).text)
"""

from scredge.runtime.batch import Batch, Event, LogitsProcessor, Request, Row
from scredge.runtime.engine import Engine, GenerationResult
from scredge.runtime.generation import Generator, decode_step, prefill, sample
from scredge.runtime.loaders import Artifact, load_ort, open_artifact
from scredge.runtime.runners.base import Decoder, Runner, TensorMeta
from scredge.runtime.tokenizer import ByteTokenizer, StreamDecoder
from scredge.sampling import GREEDY, Sampler, SamplingParams

__all__ = [
    "GREEDY", "Artifact", "Batch", "ByteTokenizer", "Decoder", "Engine", "Event",
    "GenerationResult", "Generator", "LogitsProcessor", "Request", "Row", "Runner", "Sampler",
    "SamplingParams", "StreamDecoder", "TensorMeta", "decode_step", "load_ort",
    "open_artifact", "prefill", "sample",
]
