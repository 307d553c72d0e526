"""Open the TensorRT engine of an artifact folder, refusing what cannot run here.

An engine runs only on the TensorRT version and GPU it was built for (a `portable`
TensorRT-for-RTX engine: on any GPU that TensorRT for RTX supports), and a plugin engine
only with the `Realign` plugin registered first (Python plugins are not stored in the
engine). Each of these is checked from the manifest entry before deserializing, and once
more by `Runtime.get_engine_validity` where the module has it, so the user reads which one
failed and the `scredge build` command that fixes it, not a TensorRT null pointer.
"""

from __future__ import annotations

import importlib
import importlib.util

from scredge.artifact import read_listed_bytes
from scredge.device import compute_capability, gpu_unavailable_reason
from scredge.errors import ScredgeError
from scredge.plugins.trt import PLUGIN_MODULES, TRT_MODULES
from scredge.runtime.graph_check import check_trt_entry
from scredge.runtime.loaders import Artifact


def trt_entries(artifact: Artifact) -> dict[str, dict]:
    return {k: v for k, v in artifact.engines.items() if v.get("backend") in TRT_MODULES}


def _installed_version(backend: str) -> str | None:
    """The importable module's own __version__ (what the builder recorded), else None."""
    if importlib.util.find_spec(backend) is None:
        return None
    try:
        return importlib.import_module(backend).__version__
    except (ImportError, OSError):  # a wheel whose shared libraries do not load
        return None


def mismatch(entry: dict, versions: dict[str, str | None],
             cc: tuple[int, int] | None) -> str | None:
    """Why `entry` cannot run with these installed TensorRT versions and this GPU, or None."""
    backend, built = entry.get("backend"), entry.get("tensorrt")
    have = versions.get(backend)
    if have is None:
        return f"{backend} is not installed (built with {backend} {built})"
    if have != built:
        return f"built with {backend} {built}, this machine has {have}"
    want = entry.get("compute_capability")
    here = f"{cc[0]}.{cc[1]}" if cc else None
    if want is not None and want != here:
        return f"built for compute capability {want}, this GPU is {here}"
    return None


def find_engine(artifact: Artifact) -> tuple[str, dict] | None:
    """The first TensorRT engine of the folder that fits this machine, without importing
    TensorRT; None when there is none (or no GPU)."""
    if gpu_unavailable_reason() is not None:
        return None
    versions = {b: _installed_version(b) for b in TRT_MODULES}
    cc = compute_capability()
    for key, entry in trt_entries(artifact).items():
        if mismatch(entry, versions, cc) is None:
            return key, entry
    return None


def _rebuild_fix(artifact: Artifact, backend: str = "tensorrt") -> str:
    return f"rebuild on this machine: scredge build {artifact.folder} --backend {backend}"


def load_trt_runner(artifact: Artifact, cuda=None, cuda_graph: bool = False):
    """A TrtRunner for the folder's engine that fits this machine; ScredgeError otherwise.
    cuda_graph: replay the steady decode step from CUDA graphs (runners/trt_graphs)."""
    entries = trt_entries(artifact)
    if not entries:
        raise ScredgeError("the artifact folder has no TensorRT engine",
                           received=f"engines: {sorted(artifact.engines) or 'none'}",
                           expected="an engine written by `scredge build --backend tensorrt`",
                           fix=_rebuild_fix(artifact))
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise ScredgeError("running a TensorRT engine needs an NVIDIA GPU", received=reason,
                           expected="a CUDA GPU and its driver",
                           fix="use --backend ort on this machine")
    versions = {b: _installed_version(b) for b in TRT_MODULES}
    cc = compute_capability()
    why = {e["file"]: mismatch(e, versions, cc) for e in entries.values()}
    usable = [e for e in entries.values() if why[e["file"]] is None]
    if not usable:
        first = next(iter(entries.values()))
        here = ", ".join(f"{b} {v}" for b, v in versions.items() if v) or "no TensorRT"
        cc_text = f"{cc[0]}.{cc[1]}" if cc else "unknown"
        raise ScredgeError(
            "no TensorRT engine in the folder was built for this TensorRT version and GPU",
            received="; ".join(f"{f}: {w}" for f, w in why.items()),
            expected=f"an engine for {here} on compute capability {cc_text}",
            fix=_rebuild_fix(artifact, first["backend"]))
    entry = usable[0]
    check_trt_entry(entry, artifact.config, artifact.folder)
    return _open(artifact, entry, cuda, cuda_graph)


def _open(artifact: Artifact, entry: dict, cuda, cuda_graph: bool):
    from scredge.plugins.trt import load_trt
    from scredge.runtime import trt_profiles
    from scredge.runtime.runners.cuda_ops import CudaOps
    from scredge.runtime.runners.trt_runner import TrtRunner

    trt = load_trt(entry["backend"])
    plugins = entry.get("plugins", [])
    if not isinstance(plugins, list):
        raise ScredgeError(f"engine {entry['file']} has a malformed plugin list",
                           received=repr(plugins)[:200], expected="a list of plugin entries",
                           fix=_rebuild_fix(artifact, entry["backend"]))
    for plugin in plugins:
        register_plugin(trt, plugin)
    # the bytes deserialized are the bytes checked against the manifest
    data = read_listed_bytes(artifact.folder, artifact.manifest, entry["file"], "engine file")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if runtime is None:
        raise ScredgeError("TensorRT could not create a runtime", received="Runtime() None",
                           fix="check the driver (nvidia-smi) and the TensorRT install")
    if hasattr(runtime, "get_engine_validity"):
        validity, diagnostics = runtime.get_engine_validity(data)
        if validity != trt.EngineValidity.VALID:
            flags = [name for name, v in trt.EngineInvalidityDiagnostics.__members__.items()
                     if int(diagnostics) & int(v)]
            if validity == trt.EngineValidity.INVALID:
                raise ScredgeError(f"TensorRT reports the engine {entry['file']} invalid here",
                                   received=f"{validity.name}: {flags or diagnostics}",
                                   fix=_rebuild_fix(artifact, entry["backend"]))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ScredgeError(f"TensorRT could not deserialize {entry['file']}",
                           received="deserialize_cuda_engine() returned None",
                           expected="an engine of this TensorRT version and GPU, with its "
                                    "plugins registered",
                           fix=_rebuild_fix(artifact, entry["backend"]))
    profs = trt_profiles.from_json(entry["profiles"])
    limits = trt_profiles.Limits.from_profiles(profs, artifact.config)
    mode, runtime_config = graph_setup(trt, entry["backend"], engine, cuda_graph)
    runner = TrtRunner(engine, artifact.config, artifact.kv_dtype, limits,
                       cuda if cuda is not None else CudaOps(), entry, mode, runtime_config,
                       trt_runtime=runtime)
    return runner


def graph_setup(trt, backend: str, engine, wanted: bool):
    """(CudaGraphMode, runtime config or None) for an engine: TensorRT for RTX captures
    itself when its runtime config says so (it refuses plain stream capture of engines that
    own their memory); TensorRT is captured by the decoder."""
    from scredge.runtime.runners.trt_graphs import CudaGraphMode

    if not wanted:
        return CudaGraphMode.OFF, None
    if backend == "tensorrt_rtx" and hasattr(trt, "CudaGraphStrategy"):
        config = engine.create_runtime_config()
        config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        return CudaGraphMode.NATIVE, config
    return CudaGraphMode.CAPTURE, None


def register_plugin(trt, plugin: dict) -> None:
    """Register a plugin the engine needs (from its manifest entry); refuse if it is missing,
    and refuse any module but scredge's own plugin modules (`PLUGIN_MODULES`): the folder
    names which of them, never what to import."""
    if not isinstance(plugin, dict):
        raise ScredgeError("an engine's plugin entry is malformed", received=repr(plugin)[:200],
                           expected="{name, namespace, version, python}",
                           fix="rebuild the engine: scredge build ... --backend tensorrt")
    name = f"{plugin.get('namespace')}::{plugin.get('name')} v{plugin.get('version')}"
    if plugin.get("python") not in PLUGIN_MODULES:
        raise ScredgeError(f"the engine needs the TensorRT plugin {name} from a module scredge "
                           "does not ship; an artifact folder cannot choose code to import",
                           received=repr(plugin.get("python"))[:200],
                           expected=f"one of {list(PLUGIN_MODULES)}",
                           fix="rebuild the engine: scredge build ... --backend tensorrt")
    try:
        module = importlib.import_module(plugin["python"])
        module.register(trt)
    except (ImportError, KeyError, AttributeError, ScredgeError) as exc:
        raise ScredgeError(f"the engine needs the TensorRT plugin {name}, which cannot be "
                           "registered", received=f"{type(exc).__name__}: {exc}",
                           expected=f"an importable {plugin.get('python')} with register()",
                           fix="pip install 'scredge[gpu]' (cuda-python) and reinstall scredge, "
                               "or rebuild without it: scredge build ... --no-plugin") from exc
    registry = trt.get_plugin_registry()
    if hasattr(registry, "get_creator") and registry.get_creator(
            plugin["name"], plugin["version"], plugin["namespace"]) is None:
        raise ScredgeError(f"the TensorRT plugin {name} is not in the plugin registry",
                           received="get_creator() returned None",
                           expected=f"{name} registered by {plugin['python']}",
                           fix="rebuild without it: scredge build ... --no-plugin")
