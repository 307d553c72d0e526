"""The reference side of the quantized tier (SCR_SPEC section 5), recorded at export.

The held-out text is the tail of the prose corpus (`scredge.ref.corpus`: `prose_corpus()`,
`split(..., 0.05)`, the same validation tail the shipped checkpoints were scored on), in
the artifact's own tokens: its tokenizer's ids when it carries one (a Hugging Face
folder's), else byte ids (SCR_SPEC section 1's default tokenizer). `scr_ref` in float32 runs it
teacher-forced in the same chunks the backends will use; what each position needs for
the tier is stored (`scredge.quantized_tier.Heldout`), not the whole logits.
"""

from __future__ import annotations

import numpy as np

from scredge.contract import TOKENIZER_FILE
from scredge.errors import ScredgeError
from scredge.quantized_tier import HELDOUT_TOKENS, Heldout, teacher_forced_stats
from scredge.tokenizer_files import TokenizerFiles

VAL_FRACTION = 0.05  # the shipped checkpoints' validation split


def validation_text() -> bytes:
    """The prose corpus's validation tail, whose head is the held-out text."""
    from scredge.ref.corpus import prose_corpus, split

    return split(prose_corpus(), VAL_FRACTION)[1]


def training_text() -> bytes:
    """The rest of the prose corpus: text a calibration may use (the tier never scores it)."""
    from scredge.ref.corpus import prose_corpus, split

    return split(prose_corpus(), VAL_FRACTION)[0]


def heldout_ids(vocab_size: int, tokens: int = HELDOUT_TOKENS,
                tokenizer: TokenizerFiles | None = None) -> tuple[np.ndarray, dict]:
    """`tokens` + 1 ids of the prose corpus's validation tail (encoded by `tokenizer`, or as
    bytes), and where they came from."""
    from scredge.ref.corpus import sha256

    val = validation_text()
    if tokenizer is not None:
        ids, unit = tokenizer.encode_text(val), TOKENIZER_FILE
    elif vocab_size < 256:
        raise ScredgeError("the held-out text needs byte ids or a tokenizer",
                           received=f"vocab {vocab_size}, no {TOKENIZER_FILE}",
                           expected="vocab_size >= 256 (SCR_SPEC section 1's byte tokenizer)")
    else:
        ids, unit = np.frombuffer(val, np.uint8).astype(np.int64), "bytes"
    if len(ids) < tokens + 1:
        raise ScredgeError("the held-out text is too short", received=f"{len(ids)} tokens",
                           expected=f">= {tokens + 1}")
    source = {"corpus": "prose (pydoc_data.topics)", "split": f"tail {VAL_FRACTION}",
              "tokens": tokens, "tokenizer": unit, "val_sha256": sha256(val)}
    return ids[:tokens + 1], source


def record_heldout(model, weights_sha256: str, tokens: int = HELDOUT_TOKENS,
                   tokenizer: TokenizerFiles | None = None) -> Heldout:
    """Run the float32 reference `model` over the held-out ids (needs torch)."""
    from scredge.export.stream_write import trim_heap
    from scredge.export.verify import reference_stepper

    ids, source = heldout_ids(model.config.vocab_size, tokens, tokenizer)
    step = reference_stepper(model)

    def trimmed(ids, pos):
        # the KV cache grows a chunk at a time: the heap's freed smaller copies go back
        # now, not after the pass (resident until then, they grew with the cache)
        logits = step(ids, pos)
        trim_heap()
        return logits

    return Heldout(weights_sha256, source, ids, teacher_forced_stats(trimmed, ids))
