"""Loaders open things; runners run them (Polygraphy's split).

`open_artifact` checks an artifact folder against its manifest and reads its config;
`load_ort` builds an onnxruntime session for it (the onnxruntime-optimised graph that
`scredge build --backend ort` saved, when it matches this onnxruntime, else `model.onnx`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.artifact import read_config, read_listed_bytes, reference_sha256, verify_manifest
from scredge.config import SCRConfig
from scredge.contract import (
    BACKENDS,
    CACHE_CONCAT,
    CACHE_FORMS,
    CACHE_KEY,
    CACHE_SHARED,
    CONFIG_FILE,
    GRAPHS_KEY,
    MANIFEST_FILE,
    ONNX_DATA_FILE,
    ONNX_FILE,
    QUANT_CONFIG_KEY,
    SHARED_MIN_ONNXRUNTIME,
)
from scredge.deps import require
from scredge.device import cuda_device_count, gpu_unavailable_reason
from scredge.errors import ScredgeError

EXPORT_DTYPES = ("float32", "float16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Artifact:
    folder: Path
    config: SCRConfig
    settings: dict  # the whole config.json
    manifest: dict

    @property
    def dtype(self) -> str:
        return self.settings.get("export", {}).get("dtype", "float32")  # checked on open

    @property
    def kv_dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.dtype == "float16" else np.float32)

    @property
    def engines(self) -> dict:
        return self.manifest.get("engines", {})

    @property
    def quantization(self) -> dict:
        """config.json's `quantization` section ({} for a float artifact)."""
        return self.settings.get(QUANT_CONFIG_KEY) or {}

    @property
    def precision(self) -> str:
        """What runs: 'float32', 'float16', or e.g. 'int4 weight-only (rtn, block 32)'."""
        q = self.quantization
        if not q:
            return self.dtype
        return f"int{q['bits']} weight-only ({q['method']}, block {q['block_size']})"

    @property
    def reference_sha256(self) -> str | None:
        """The sha256 of the float32 reference weights (kept or not) the folder came from."""
        return reference_sha256(self.settings, self.manifest)

    @property
    def graphs(self) -> dict[str, str]:
        """backend ('ort', 'trt') -> the graph it reads, for the backends the folder holds a
        graph for (v3 `--target`; an older folder holds both)."""
        graphs = self.settings.get(GRAPHS_KEY)
        if graphs is None:
            return {b: self.graph_entry(b).get("file", ONNX_FILE) for b in BACKENDS}
        return dict(graphs)

    def graph_file(self, backend: str) -> str:
        """The ONNX graph a backend ('ort' or 'trt') reads: a quantized artifact holds one
        per backend (SCR_SPEC section 4), a float one `model.onnx` for both; a folder
        exported for the other backend only (--target) is refused by name."""
        graphs = self.graphs
        if backend not in graphs:
            raise ScredgeError(
                f"this artifact holds no graph for the {backend} backend",
                received=f"{self.folder} was exported with --target "
                         f"{self.settings.get('export', {}).get('target', '?')} (graphs: "
                         f"{sorted(graphs)})",
                expected=f"a folder exported with --target {backend} or --target all",
                fix=f"export it again with --target all (or --target {backend}), or use "
                    f"--backend {next(iter(graphs), 'ort')}")
        return graphs[backend]

    def graph_entry(self, backend: str) -> dict:
        """config.json's record of the graph `backend` reads ({} for a float artifact)."""
        return self.quantization.get("graphs", {}).get(backend, {})

    def cache_form(self, backend: str) -> str:
        """The KV-cache form of `backend`'s graph (SCR_SPEC v3 section 3): 'concat' or
        'shared' (a quantized graph's entry says, else the top-level `cache` map)."""
        form = self.graph_entry(backend).get(CACHE_KEY)
        top = self.settings.get(CACHE_KEY)
        return form or (top.get(backend) if isinstance(top, dict) else None) or CACHE_CONCAT

    @property
    def min_onnxruntime(self) -> str | None:
        """The oldest onnxruntime with every kernel of the onnxruntime graph, if recorded."""
        need = self.graph_entry("ort").get("min_onnxruntime")
        return need or (SHARED_MIN_ONNXRUNTIME if self.cache_form("ort") == CACHE_SHARED
                        else None)


def open_artifact(folder: str | Path) -> Artifact:
    if not isinstance(folder, (str, os.PathLike)):
        raise ScredgeError("an artifact folder is a path", received=repr(folder)[:80],
                           expected="a str or pathlib.Path")
    folder = Path(folder)
    if not folder.is_dir():
        raise ScredgeError("artifact folder not found", received=str(folder),
                           expected="a folder written by `scredge export`",
                           fix="export one: scredge export --preset tiny --out " + str(folder))
    if not (folder / MANIFEST_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise ScredgeError("not an scredge artifact folder", received=str(folder),
                           expected=f"{ONNX_FILE}, {MANIFEST_FILE}, {CONFIG_FILE} inside",
                           fix="export one: scredge export --preset tiny --out " + str(folder))
    # every file read below (and by the loaders) is listed, inside the folder and hashed
    manifest = verify_manifest(folder, required=(CONFIG_FILE,))
    config, settings = read_config(folder, manifest)
    _check_graphs(folder, settings, manifest)
    dtype = settings.get("export", {}).get("dtype", "float32")
    if dtype not in EXPORT_DTYPES:
        raise ScredgeError("config.json names an unknown export dtype", received=repr(dtype),
                           expected=f"one of {list(EXPORT_DTYPES)}",
                           fix=f"re-export the folder: scredge export ... --out {folder} --force")
    if settings.get("export", {}).get("external_data") and ONNX_DATA_FILE not in manifest["files"]:
        raise ScredgeError(f"manifest.json does not list '{ONNX_DATA_FILE}'",
                           received="config.json says the graph has external data",
                           expected=f"{ONNX_DATA_FILE} listed and hashed",
                           fix=f"re-export the folder: scredge export ... --out {folder} --force")
    artifact = Artifact(folder, config, settings, manifest)
    for backend in ("ort", "trt"):
        if artifact.cache_form(backend) not in CACHE_FORMS:
            raise ScredgeError(f"config.json names an unknown KV-cache form for {backend}",
                               received=repr(artifact.cache_form(backend))[:80],
                               expected=f"one of {list(CACHE_FORMS)}",
                               fix=f"re-export the folder: scredge export ... --out {folder} "
                                   "--force")
    return artifact


def _check_graphs(folder: Path, settings: dict, manifest: dict) -> None:
    """config.json's `graphs` (v3): backend -> a graph file the manifest lists; without it
    (an older folder) model.onnx must be listed."""
    graphs = settings.get(GRAPHS_KEY, {ONNX_FILE: ONNX_FILE})
    fix = f"re-export the folder: scredge export ... --out {folder} --force"
    if (not isinstance(graphs, dict) or not graphs
            or not all(isinstance(v, str) for v in graphs.values())
            or not set(graphs) <= set(BACKENDS) | {ONNX_FILE}):
        raise ScredgeError("config.json's graphs section is malformed",
                           received=repr(graphs)[:200],
                           expected='{"ort": "model.onnx", "trt": "model.trt.onnx"} or a part',
                           fix=fix)
    for name in sorted(set(graphs.values())):
        if name not in manifest["files"]:
            raise ScredgeError(f"manifest.json does not list '{name}'",
                               received=f"config.json's graphs name {name}",
                               expected=f"{name} listed and hashed", fix=fix)


def artifact_summary(folder: str | Path) -> dict:
    """What `scredge info FOLDER` says: precision, the graph each backend reads and, for
    a quantized onnxruntime form, which blocks it runs as onnxruntime's fused kernels and
    the calibration text of a calibrated method."""
    a = open_artifact(folder)
    return {"folder": str(folder), "precision": a.precision,
            "graphs": a.graphs,
            "cache": {b: a.cache_form(b) for b in a.graphs},
            "ort_fused": a.graph_entry("ort").get("fused", {}),
            "calibration": a.quantization.get("calibration", {}),
            "engines": sorted(a.engines)}


def ort_providers(device: str) -> list[str]:
    """device 'auto' | 'cpu' | 'cuda' -> onnxruntime providers, CUDA only if it can run."""
    if device not in DEVICES:
        raise ScredgeError("unknown device", received=repr(device)[:80],
                           expected=f"one of {list(DEVICES)}")
    ort = require("onnxruntime")
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available and cuda_device_count() > 0
    if device == "cuda" and not has_cuda:
        why = gpu_unavailable_reason() or f"onnxruntime providers: {available}"
        raise ScredgeError("cannot run onnxruntime on CUDA here", received=why,
                           fix="pip install 'scredge[gpu]' (onnxruntime-gpu) on a machine "
                               "with an NVIDIA GPU, or use device='cpu'")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda else [
        "CPUExecutionProvider"]


def ort_session(model: Path | bytes, device: str = "cpu", *, threads: int | None = None,
                optimize: bool = True, save_optimized: Path | None = None,
                profile_prefix: Path | None = None,
                config_entries: dict[str, str] | None = None, realign=None,
                external_data: dict[str, bytes] | None = None,
                external_folder: Path | None = None, arena: bool = True):
    """The one place an onnxruntime InferenceSession is made: `model` a path or serialized
    bytes, on `device` ('auto' | 'cpu' | 'cuda', see `ort_providers`); `optimize` False for
    a graph optimised offline; `save_optimized` writes the optimised graph there;
    `profile_prefix` turns on onnxruntime's profiler, writing under that prefix;
    `config_entries` are onnxruntime session config entries; `realign` a
    `realign_kernel.RealignKernel` whose custom-op library is registered (None: none);
    `external_data` the graph's external data files by name, already in memory (with bytes,
    `external_folder` is the folder onnxruntime resolves any other external reference in,
    and confines it to); `arena` False: the CPU allocator frees each buffer when done with
    it rather than keeping a growing arena (less memory, the same kernels and numbers)."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads < 0):
        raise ScredgeError("invalid thread count", received=repr(threads)[:80],
                           expected="an integer >= 1 (0 or None: onnxruntime's default)")
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    if save_optimized is not None:
        opts.optimized_model_filepath = str(save_optimized)
    for key, value in (config_entries or {}).items():
        opts.add_session_config_entry(key, value)
    if external_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      str(external_folder))
    if external_data:
        names = list(external_data)
        opts.add_external_initializers_from_files_in_memory(
            names, [external_data[n] for n in names], [len(external_data[n]) for n in names])
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    if realign is not None:
        from scredge.runtime.realign_kernel import register

        register(opts, realign)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=ort_providers(device))


def verified_graph(artifact: Artifact, name: str) -> tuple[bytes, dict[str, bytes]]:
    """(graph bytes, external data files by name) of the graph `name`, each read once
    through the manifest check (read_listed_bytes): onnxruntime loads exactly the bytes
    that were verified, never a file swapped in after the folder was opened. A graph's
    external data is the listed file NAME.data beside it (what the exporter writes), and
    model.onnx.data when the graph names it: a quantized folder's TensorRT form reads the
    float tensors it shares with the onnxruntime form there (SCR_SPEC v3 section 4, nothing
    stored twice; export/quant_store.py)."""
    graph = read_listed_bytes(artifact.folder, artifact.manifest, name, f"graph {name}")
    external = {}
    shared = [ONNX_DATA_FILE] if ONNX_DATA_FILE.encode() in graph else []
    for data_name in dict.fromkeys((f"{name}.data", *shared)):
        if data_name in artifact.manifest["files"]:
            external[data_name] = read_listed_bytes(artifact.folder, artifact.manifest,
                                                    data_name, f"graph data {data_name}")
    return graph, external


def _check_onnxruntime_version(artifact: Artifact, installed: str) -> None:
    """A quantized onnxruntime form names the oldest onnxruntime with all its kernels."""
    from packaging.version import Version  # onnxruntime's own dependency

    need = artifact.min_onnxruntime
    if need and Version(installed).release < Version(need).release:
        raise ScredgeError("this artifact's onnxruntime graph needs a newer onnxruntime",
                           received=f"onnxruntime {installed}",
                           expected=f"onnxruntime >= {need} (its fused Attention / "
                                    "RotaryEmbedding / SkipSimplifiedLayerNormalization kernels)",
                           fix=f"pip install 'onnxruntime>={need}'")


# onnxruntime fuses a quantized TensorRT form's DequantizeLinear + MatMul into MatMulNBits
# with int8 *activations* unless told otherwise; level 0 keeps that form weight-only, as
# TensorRT runs it and as the export's tier check measured it
DEQUANTIZE_FORM_ENTRIES = {"session.qdq_matmulnbits_accuracy_level": "0"}


def ort_kind(device: str) -> str:
    """'cuda' when onnxruntime will run on the CUDA provider for `device`, else 'cpu'."""
    return "cuda" if ort_providers(device)[0] == "CUDAExecutionProvider" else "cpu"


def ort_graph(artifact: Artifact, kind: str) -> tuple[str, str]:
    """(graph file, KV-cache form) that onnxruntime runs for `artifact` on `kind` ('cpu' |
    'cuda'). The shared form runs on the CPU provider only (runtime/shared_cache.py: its
    row moves and joins are host copies), so on CUDA a folder whose onnxruntime graph is
    shared runs its TensorRT graph instead: the concat form of the same verified export,
    standard ONNX that onnxruntime runs too (float: the graph with the scr.Realign
    function; quantized: blocked DequantizeLinear, the form the export's tier check ran in
    onnxruntime). A folder without one (`--target ort`) is refused by name."""
    name, form = artifact.graph_file("ort"), artifact.cache_form("ort")
    if kind != "cuda" or form != CACHE_SHARED:
        return name, form
    if "trt" in artifact.graphs and artifact.cache_form("trt") == CACHE_CONCAT:
        return artifact.graphs["trt"], CACHE_CONCAT
    raise ScredgeError(
        "this artifact's onnxruntime graph has the shared KV cache, which runs on the CPU "
        "provider only, and the folder holds no concat-form graph for CUDA",
        received=f"{artifact.folder} ({name}: cache shared; graphs: {sorted(artifact.graphs)})",
        expected="device='cpu', or a folder with a concat-form graph",
        fix="run it with --device cpu, or export it again with --cache concat (or "
            "--target all, whose model.trt.onnx onnxruntime runs on CUDA): scredge export "
            f"... --cache concat --out {artifact.folder} --force")


def load_ort(artifact: Artifact, device: str = "auto", threads: int | None = None,
             realign_library: Path | None = None):
    """An OrtRunner for `artifact`; uses its saved optimised graph when it fits and the
    Realign custom-op kernel where it is built and passes its probe (`realign_kernel.pick`;
    `realign_library` names another library to try)."""
    ort = require("onnxruntime")
    from scredge.runtime.graph_check import check_ort_session
    from scredge.runtime.realign_kernel import FUNCTION, RealignKernel, pick
    from scredge.runtime.runners.ort_runner import OrtRunner

    kind = ort_kind(device)
    name, form = ort_graph(artifact, kind)
    fallback = name != artifact.graph_file("ort")  # CUDA: the TensorRT graph (concat)
    if not fallback:
        _check_onnxruntime_version(artifact, ort.__version__)
    realign = (pick(kind, realign_library) if artifact.config.scr_layers
               else RealignKernel(FUNCTION, reason="no SCR layer in this model"))
    optimized = artifact.engines.get(f"ort-{kind}")
    # the offline-optimised graph has the function inlined (no Realign node left), so the
    # kernel needs model.onnx
    if realign.kind == FUNCTION and optimized and optimized.get("onnxruntime") == ort.__version__:
        # already optimised offline, for this onnxruntime and device
        name, optimize = optimized["file"], False
    else:
        optimize = True
    path = artifact.folder / name
    graph, external = verified_graph(artifact, name)
    try:
        session = ort_session(graph, device, threads=threads, optimize=optimize, realign=realign,
                              external_data=external, external_folder=artifact.folder,
                              config_entries=DEQUANTIZE_FORM_ENTRIES
                              if fallback and artifact.quantization else None)
    except ScredgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types (Fail, ...)
        raise ScredgeError(f"onnxruntime cannot load {path.name}",
                           received=f"{type(exc).__name__}: {exc}"[:400],
                           expected="an ONNX graph written by scredge export / build",
                           fix=f"re-export the folder: scredge export ... --out "
                               f"{artifact.folder} --force") from exc
    check_ort_session(session, artifact.config, artifact.kv_dtype, artifact.folder, form)
    return OrtRunner(session, artifact.config, artifact.kv_dtype, realign, graph=name)
