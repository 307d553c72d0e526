"""`scredge build --backend tensorrt|tensorrt_rtx`: a TensorRT engine in the artifact folder.

Polygraphy's loaders parse, configure and build (`NetworkFromOnnxBytes`, `CreateConfig` /
`CreateConfigRTX`, `EngineBytesFromNetwork`); this module decides what they get:

- the graph: `onnx_modes.for_plugin` (default; the Python `Realign` plugin is registered
  first) or `onnx_modes.decomposed` (`no_plugin`), never the parser's own choice; a plain
  transformer (`scr_layers = []`, no `Realign` node) goes to the parser as it is, no plugin;
- a strongly typed network: the precision is the ONNX file's (float32 or float16 export);
- the two profiles of `trt_profiles`;
- a timing cache kept per backend, TensorRT version and GPU, so rebuilds are quick.

Engines are tied to the TensorRT version and the GPU, so the file says both:
`model.trt-10.3.0-sm87.engine`. TensorRT for RTX builds without a GPU too; such an engine
targets every compute capability that TensorRT for RTX supports and is named `portable`
(`model.trtrtx-1.7.1-portable.engine`); with a GPU it targets that GPU only. The engine is
written under a temporary name and renamed, then listed in manifest.json with what the
loader checks before deserializing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from scredge.artifact import add_to_manifest
from scredge.contract import ENGINE_FILE, INPUT_IDS
from scredge.deps import require
from scredge.device import compute_capability, gpu_unavailable_reason
from scredge.errors import ScredgeError
from scredge.plugins.realign import python_plugin
from scredge.plugins.trt import TRT_MODULES
from scredge.runtime import trt_profiles
from scredge.runtime.loaders import Artifact

_TAG = {"tensorrt": "trt", "tensorrt_rtx": "trtrtx"}
PLUGIN = {"name": python_plugin.NAME, "namespace": python_plugin.NAMESPACE,
          "version": python_plugin.VERSION, "python": python_plugin.__name__}
CACHE_ENV = "SCREDGE_CACHE_DIR"


def short_version(version: str) -> str:
    return ".".join(version.split(".")[:3])


def engine_tag(backend: str, version: str, cc: tuple[int, int] | None) -> str:
    """'trt-10.3.0-sm87', 'trtrtx-1.7.1-sm89', 'trtrtx-1.7.1-portable' (no GPU targeted)."""
    target = f"sm{cc[0]}{cc[1]}" if cc is not None else "portable"
    return f"{_TAG[backend]}-{short_version(version)}-{target}"


def default_timing_cache(tag: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "scredge")
    return root / "timing" / f"{tag}.cache"


def import_trt(backend: str) -> ModuleType:
    """Import `tensorrt` or `tensorrt_rtx` and point Polygraphy at the same module.

    Polygraphy reads POLYGRAPHY_USE_TENSORRT_RTX once, when `polygraphy.config` is first
    imported, and binds its lazy TensorRT import then; so the variable is set before that,
    and a process that already imported Polygraphy for the other module is refused."""
    if backend not in TRT_MODULES:
        raise ScredgeError("unknown TensorRT backend", received=repr(backend),
                           expected=f"one of {list(TRT_MODULES)}")
    from scredge.plugins.trt import load_trt

    trt = load_trt(backend)
    want_rtx = backend == "tensorrt_rtx"
    if "polygraphy.config" not in sys.modules:
        os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if want_rtx else "0"
    config = require("polygraphy.config")
    if bool(config.USE_TENSORRT_RTX) != want_rtx:
        raise ScredgeError(
            "Polygraphy was already set up for the other TensorRT in this process",
            received=f"POLYGRAPHY_USE_TENSORRT_RTX={int(config.USE_TENSORRT_RTX)}",
            expected=f"POLYGRAPHY_USE_TENSORRT_RTX={int(want_rtx)} for {backend}",
            fix=f"build in a fresh process (`scredge build --backend {backend}`), or set "
                f"POLYGRAPHY_USE_TENSORRT_RTX={int(want_rtx)} before polygraphy is imported")
    return trt


def pick_backend(backend: str) -> str:
    """'auto' -> 'tensorrt' / 'tensorrt_rtx' when one imports and a GPU is present, else
    'ort'; any other name is returned as is."""
    if backend != "auto":
        return backend
    if gpu_unavailable_reason() is not None:
        return "ort"
    from scredge.plugins.trt import load_trt

    try:
        return load_trt().__name__
    except ScredgeError:
        return "ort"


def build_trt(artifact: Artifact, backend: str = "tensorrt_rtx", *, no_plugin: bool = False,
              max_batch: int = trt_profiles.DEFAULT_MAX_BATCH, max_prefill: int | None = None,
              max_context: int | None = None, timing_cache: str | Path | None = None,
              opt_level: int | None = None,
              log: Callable[[str], None] = lambda s: None) -> tuple[Path, dict]:
    """Build, write and list one engine; returns (engine path, its manifest entry)."""
    config = artifact.config
    profs = trt_profiles.profiles(config, max_batch, max_prefill, max_context)  # refuse early
    trt = import_trt(backend)
    gpu_reason = gpu_unavailable_reason()
    if backend == "tensorrt" and gpu_reason is not None:
        raise ScredgeError("building a TensorRT engine needs an NVIDIA GPU", received=gpu_reason,
                           expected="a GPU (engines are built on the GPU they run on)",
                           fix="build on the target machine, or --backend tensorrt_rtx "
                               "(builds without a GPU), or --backend ort")
    cc = compute_capability() if gpu_reason is None else None
    tag = engine_tag(backend, trt.__version__, cc)
    name = ENGINE_FILE.format(tag=tag)
    cache = Path(timing_cache) if timing_cache is not None else default_timing_cache(tag)
    plain = not config.scr_layers  # no Realign node: neither mode applies, no plugin
    no_plugin = no_plugin or plain
    mode = "none" if plain else "decomposed" if no_plugin else "plugin"
    target_text = f"GPU sm_{cc[0]}{cc[1]}" if cc else "no GPU: portable engine"
    log(f"building {name} with {backend} {trt.__version__} ({target_text}), {mode} mode, "
        f"{artifact.precision}, {artifact.graph_file('trt')}")
    engine_bytes, plugin_layers = _build_bytes(trt, artifact, backend, mode, profs, cc, cache,
                                               opt_level, log)
    target = artifact.folder / name
    tmp = artifact.folder / f".{name}.partial"
    try:
        tmp.write_bytes(engine_bytes)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    entry = {
        "file": name, "backend": backend, "tensorrt": trt.__version__,
        "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
        "plugin_mode": mode, "plugin_layers": plugin_layers,
        "plugins": [] if no_plugin else [PLUGIN], "dtype": artifact.dtype,
        "precision": artifact.precision, "graph": artifact.graph_file("trt"),
        "max_batch": max_batch, "max_prefill": profs[trt_profiles.PREFILL][INPUT_IDS][2][1],
        "max_context": max_context, "profiles": trt_profiles.to_json(profs),
    }
    add_to_manifest(artifact.folder, [name], engines={tag: entry})
    log(f"wrote {name} ({len(engine_bytes) / 2**20:.1f} MiB), listed in manifest.json")
    return target, entry


def _build_bytes(trt, artifact, backend, mode: str, profs, cc, cache: Path, opt_level, log):
    model = verified_onnx(artifact, artifact.graph_file("trt"))  # quantized: DQ form
    expected = len(artifact.config.scr_layers) if mode == "plugin" else 0
    return build_model_bytes(trt, model, backend, mode, profs, cc, cache, opt_level, log,
                             expected)


def verified_onnx(artifact, name: str):
    """The ONNX model `name` of the artifact from the bytes the manifest verifies, its
    external data (NAME.data) filled in from those verified bytes too, never re-read from
    the folder by path."""
    onnx = require("onnx")
    from scredge.runtime.loaders import verified_graph

    graph, external = verified_graph(artifact, name)
    model = onnx.load_from_string(graph)
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        data = external.get(info.get("location", ""))
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        if data is None or length < 0 or offset + length > len(data):
            raise ScredgeError(f"graph {name} names external data the artifact does not hold",
                               received=f"{tensor.name}: {info}"[:200],
                               expected=f"{name}.data listed in manifest.json",
                               fix=f"re-export the folder: scredge export ... --out "
                                   f"{artifact.folder} --force")
        tensor.raw_data = data[offset:offset + length]
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model


def build_model_bytes(trt, model, backend, mode, profs, cc, cache: Path | None,
                      opt_level, log, expected_plugin_layers: int):
    """Parse an scredge ONNX model and build engine bytes. `mode`: 'plugin' (Realign as the
    plugin), 'decomposed' (its function inlined), or 'none' (a plain transformer's graph,
    which has no Realign node, as it is)."""
    require("polygraphy")
    from polygraphy.backend import trt as pg
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    from scredge.plugins import onnx_modes

    if mode == "none":
        onnx_modes.check_plain(model)
        flags = []
    elif mode == "decomposed":
        model = onnx_modes.decomposed(model)
        flags = []
    else:
        from scredge.plugins.realign.python_plugin import register

        if backend == "tensorrt_rtx":
            from scredge.plugins.trt import ensure_rtx_parser_link

            ensure_rtx_parser_link()
        register(trt)
        model = onnx_modes.for_plugin(model)
        flags = [f for f in (getattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE", None),)
                 if f is not None]
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    pg_profiles = []
    for prof in profs:
        p = pg.Profile()
        for input_name, (lo, opt, hi) in prof.items():
            p.add(input_name, min=lo, opt=opt, max=hi)
        pg_profiles.append(p)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    monitor = progress_monitor(trt, log)  # referenced here until the build returns
    settings = dict(profiles=pg_profiles,
                    load_timing_cache=str(cache) if cache and cache.is_file() else None,
                    builder_optimization_level=opt_level, progress_monitor=monitor)
    if backend == "tensorrt_rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        create_config = CreateConfigRTX(use_gpu=cc is not None, **settings)
    else:
        create_config = pg.CreateConfig(**settings)
    t0 = time.perf_counter()
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            log("parsing the ONNX graph ...")
            network = pg.NetworkFromOnnxBytes(model.SerializeToString(), flags=flags or None,
                                              strongly_typed=strongly_typed)()
            plugin_layers = _count_plugin_layers(trt, network[1])
            if plugin_layers != expected_plugin_layers:
                raise ScredgeError(
                    "the parsed network has the wrong number of Realign plugin layers",
                    received=plugin_layers,
                    expected=f"{expected_plugin_layers} (one per SCR layer, {mode} mode)",
                    fix="report this with `scredge info` output; --no-plugin builds without")
            log(f"parsed: {network[1].num_layers} layers, {plugin_layers} Realign plugin "
                f"layers; building with timing cache {cache} ...")
            engine_bytes = pg.EngineBytesFromNetwork(
                network, create_config, save_timing_cache=str(cache) if cache else None)()
    except PolygraphyException as exc:
        raise ScredgeError(f"TensorRT could not build the engine ({backend})",
                           received=str(exc).strip().splitlines()[-1] if str(exc) else "?",
                           expected="a graph written by `scredge export`",
                           fix="see the TensorRT messages above; --no-plugin builds without "
                               "the Realign plugin") from exc
    log(f"built in {time.perf_counter() - t0:.1f} s")
    return bytes(engine_bytes), plugin_layers


def progress_monitor(trt, log: Callable[[str], None], max_depth: int = 1):
    """A TensorRT IProgressMonitor that logs the builder's phases (two levels deep, each
    with its time) and, at most every 10 s, the step count of a long top-level phase;
    None where the module has no IProgressMonitor (TensorRT < 8.6)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    import threading

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()  # TensorRT may call from several threads
            self.phases: dict[str, tuple[int, float, int]] = {}  # name -> depth, start, steps
            self.last_step_log = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                parent = self.phases.get(parent_phase) if parent_phase else None
                depth = 0 if parent is None else parent[0] + 1
                self.phases[phase_name] = (depth, time.perf_counter(), num_steps)
                if depth <= max_depth:
                    log(f"  {'  ' * depth}{phase_name} ...")

        def step_complete(self, phase_name, step):
            with self.lock:
                depth, _, steps = self.phases.get(phase_name, (max_depth + 1, 0.0, 0))
                now = time.perf_counter()
                if depth == 0 and now - self.last_step_log >= 10.0:
                    self.last_step_log = now
                    log(f"  {phase_name}: step {step + 1} of {steps}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self.lock:
                depth, start, _ = self.phases.pop(phase_name, (max_depth + 1, 0.0, 0))
                if depth <= max_depth:
                    log(f"  {'  ' * depth}{phase_name}: done in "
                        f"{time.perf_counter() - start:.1f} s")

    return BuildProgress()


def _count_plugin_layers(trt, network) -> int:
    plugin_types = {getattr(trt.LayerType, n) for n in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
                    if hasattr(trt.LayerType, n)}
    return sum(network.get_layer(i).type in plugin_types for i in range(network.num_layers))
