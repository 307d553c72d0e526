"""Every size, time and value limit scredge puts on what it reads, defined once.

docs/trust-and-safety.md lists them with their reasons; the code that enforces each one
imports it from here.
"""

from __future__ import annotations

# ---- files read from a folder or named by the user ------------------------------------
MAX_JSON_BYTES = 16 << 20  # config.json, manifest.json, tokenizer_config.json, --messages
MAX_TEXT_BYTES = 16 << 20  # chat_template.jinja and other small text files
MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.json (the largest hub files are tens of MiB)
MAX_CALIBRATION_BYTES = 64 << 20  # a --calibration text (GPTQ reads a few MiB of it)
MAX_TRAIN_DATA_BYTES = 8 << 30  # one --data file of `scredge train`
MAX_JSON_DEPTH = 64  # nesting of objects/arrays in any JSON file we read

# ---- chat templates (code from the model folder, run in jinja2's sandbox) --------------
TEMPLATE_SECONDS = 5.0  # wall time of one rendering
TEMPLATE_OUTPUT_CHARS = 8 << 20  # characters of rendered prompt
TEMPLATE_WORK_CHARS = 64 << 20  # characters built in all (output, call results, loop text)
TEMPLATE_VALUE_CHARS = TEMPLATE_OUTPUT_CHARS  # one string/list a template builds or passes on
TEMPLATE_CALL_DEPTH = 64  # nested macro / recursive-loop calls
TEMPLATE_INT_BITS = 4096  # integers a template computes (no 2 ** 10 ** 9)

# ---- model files -----------------------------------------------------------------------
MAX_SAFETENSORS_HEADER_BYTES = 100 << 20  # safetensors' own limit on its JSON header
MAX_SAFETENSORS_TENSORS = 1 << 20  # tensors named in one header
MAX_ARRAY_BYTES = 4 << 30  # one array of a golden / held-out .npz file
MAX_MODEL_DIM = 1 << 20  # d_model, d_ff, vocab_size (a 2**40 hidden size is refused)
MAX_MODEL_LAYERS = 1024
MAX_MODEL_HEADS = 1 << 12
MAX_CONTEXT = 1 << 24  # max_seq_len / max_position_embeddings
MAX_PARAMETERS = 1 << 38  # the whole model's parameter count (275 billion)

# ---- sampling --------------------------------------------------------------------------
MAX_TEMPERATURE = 100.0  # above this every distribution is uniform to float precision
REPETITION_PENALTY_RANGE = (1e-2, 1e2)  # CTRL/HF penalty; 1 = off

# ---- generation --------------------------------------------------------------------------
# A long prompt is prefilled in calls of at most this many positions: bounded attention
# memory per call, and the points where a prefill can be cut (the server: a client gone,
# --timeout passed, a shutdown's grace over). Batch(prefill_chunk=...) sets another.
PREFILL_CHUNK = 512

# ---- the HTTP server (scredge serve) ---------------------------------------------------
MAX_REQUEST_BODY_BYTES = 8 << 20  # one request body; past it 413 (--max-body-bytes)
SCHEDULER_STALL_S = 120.0  # /health says 503 when work waits this long with no progress
