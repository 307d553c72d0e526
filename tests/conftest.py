"""Shared fixtures: tiny configs and fixed seeds. Every test names its oracle.

The exported artifacts are shared per session (an export takes seconds). Weights use std
0.08 so greedy decoding is decisive and varied (std 0.02 gives nearly flat logits whose
argmax is a coin toss between backends, which tests nothing)."""

from __future__ import annotations

import pytest

from scredge.config import SCRConfig

# Smaller than the `tiny` preset so the whole suite stays fast on two cores.
MICRO = SCRConfig(
    vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
    window=8, scr_layers=(0, 1),
)
WINDOWED = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                     window=16, scr_layers=(0, 1))


@pytest.fixture
def micro() -> SCRConfig:
    return MICRO


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """The `tiny` preset (W = 128) with decisive weights: (reference model, folder), exported
    with the defaults (the onnxruntime graph in the shared KV-cache form, SCR_SPEC v3)."""
    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    model = build_model(SCRConfig.preset("tiny"), seed=0, gamma=0.5, std=0.08)
    out = tmp_path_factory.mktemp("runtime") / "tiny"
    export_artifact(model, out)
    return model, out


@pytest.fixture(scope="session")
def small_window_artifact(tmp_path_factory):
    """A micro model with W = 16, so short tests run far past the window."""
    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    model = build_model(WINDOWED, seed=1, gamma=0.5, std=0.08)
    out = tmp_path_factory.mktemp("runtime") / "w16"
    export_artifact(model, out)
    return model, out


@pytest.fixture(scope="session")
def small_window_concat(small_window_artifact, tmp_path_factory):
    """The same W = 16 model exported `--cache concat` (one graph for both backends, v2
    attention_mask): for the tests of the concat form itself and its OrtDecoder."""
    from scredge.export.pipeline import export_artifact

    model, _ = small_window_artifact
    out = tmp_path_factory.mktemp("runtime") / "w16-concat"
    export_artifact(model, out, cache="concat")
    return model, out


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE (vocab 2048) trained once per session on our prose corpus."""
    pytest.importorskip("tokenizers", reason="tokenizers (ort extra) not installed")
    from hf_models import train_bpe

    return train_bpe()


@pytest.fixture(scope="session")
def hf_tokenizer_dir(bpe_tokenizer, tmp_path_factory):
    """(folder, transformers tokenizer): the BPE saved by transformers with its chat template."""
    pytest.importorskip("transformers", reason="transformers (dev extra) not installed")
    from hf_models import save_tokenizer

    folder = tmp_path_factory.mktemp("hf_tokenizer")
    save_tokenizer(folder, bpe_tokenizer)
    import transformers

    return folder, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_opset21():
    """The shipped `tiny` (reference model, float32 ONNX graph at opset 21), exported once per
    session: the starting point of the quantized graphs (export/quantize.py)."""
    from scredge.export.graph import export_graph
    from scredge.export.pipeline import cast_for_export
    from scredge.export.quantize import QUANT_OPSET
    from scredge.export.sources import from_pretrained

    model = from_pretrained("tiny").model
    return model, export_graph(cast_for_export(model, "float32"), QUANT_OPSET)


@pytest.fixture(scope="session")
def tiny_quantized(tiny_opset21, tmp_path_factory):
    """{bits: folder}: int8 and int4 artifacts of `tiny` through export_artifact (SCR_SPEC
    section 4; the default, shared-cache onnxruntime form), with the session's float graph
    standing in for a second torch export."""
    from onnx_graphs import export_graph_stand_in

    from scredge.export import pipeline
    from scredge.export.quantize import QuantSpec

    model, proto = tiny_opset21

    root = tmp_path_factory.mktemp("quantized")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "export_graph", export_graph_stand_in(proto))
        return {bits: pipeline.export_artifact(model, root / f"int{bits}",
                                               quantize=QuantSpec(bits)) for bits in (8, 4)}


@pytest.fixture(scope="session")
def tiny_int4_concat(tiny_opset21, tmp_path_factory):
    """An int4 artifact of `tiny` exported `--cache concat` (the streamed float graph the
    quantizer reads one weight at a time; export/quant_store.py), built as tiny_quantized."""
    from onnx_graphs import export_graph_stand_in

    from scredge.export import pipeline
    from scredge.export.quantize import QuantSpec

    model, proto = tiny_opset21
    out = tmp_path_factory.mktemp("quantized_concat") / "int4"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "export_graph", export_graph_stand_in(proto))
        return pipeline.export_artifact(model, out, quantize=QuantSpec(4), cache="concat")


@pytest.fixture(scope="session")
def realign_ort_library():
    """The Realign onnxruntime custom-op library (CPU), built here when missing or stale
    (`make kernels` does the same); skipped with the reason where it cannot be built."""
    from scredge.errors import ScredgeError
    from scredge.plugins.realign.ort_kernel import build_library, find_library

    library, _ = find_library()
    if library is None:
        try:
            library = build_library()
        except ScredgeError as exc:
            pytest.skip(f"Realign onnxruntime kernel not built: {exc.what} ({exc.received})")
    return library


@pytest.fixture(scope="session")
def future_api_library(realign_ort_library, tmp_path_factory):
    """The same source built to ask onnxruntime for API version 99: what a library built
    against newer headers than the installed onnxruntime does."""
    from scredge.plugins.realign.ort_kernel import build_library

    return build_library(tmp_path_factory.mktemp("api99") / "libscr_realign_ort.so", api=99)
