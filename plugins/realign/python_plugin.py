"""The `Realign` TensorRT plugin (SCR_SPEC section 2) written in Python, as an IPluginV3.

One source serves `tensorrt` (10.0+, JetPack 6's 10.3 included) and `tensorrt_rtx`: the
classes are defined per module by `plugin_classes(trt)`, because a Python plugin must derive
from the binding classes of the TensorRT that loads it. The binding names used here are the
same in tensorrt 10.3 (python/src/infer/pyPlugin.cpp at release/10.3) and tensorrt_rtx 1.7;
the one difference we touch is in the registry (see `register`).

Build-time methods (shapes, types, formats, configuration, serialization, clone) make no
CUDA call, so TensorRT for RTX builds an engine with this plugin on a CPU-only machine. At
run time `enqueue` launches the nvcc-built kernels of `realign_kernel.cu` from the fatbin
through cuda-python's driver API (`launch_plan.plan` says what to launch, exactly as the C++
launcher does) on TensorRT's stream with TensorRT's workspace; no torch. Python plugins are
not stored in the engine: call `register()` before parsing and before deserializing.

TensorRT catches every exception raised in these methods, prints it to stderr ("[ERROR]
Exception caught in create_plugin(): ..." or "[ERROR] Exception thrown from
configure_plugin() ...") and treats the call as failed, so the parser returns False or the
builder None; nothing crashes. Invalid input is therefore rejected with a ScredgeError as
early as TensorRT allows: kappa in the creator, ranks in get_output_shapes and dtypes in
get_output_data_types (all at parse time), shapes and the kernels' size limits in
configure_plugin and formats in supports_format_combination (build time).
"""

from __future__ import annotations

import functools
import math
import threading
from types import ModuleType

from scredge.contract import PLUGIN_NAME as NAME
from scredge.contract import PLUGIN_NAMESPACE as NAMESPACE
from scredge.contract import PLUGIN_VERSION as VERSION
from scredge.contract import REALIGN_INPUTS as INPUTS
from scredge.contract import REALIGN_OUTPUTS as OUTPUTS
from scredge.errors import ScredgeError

RANKS = (3, 3, 2, 2, 1, 1, 1, 1)  # h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g
_REEXPORT = "re-export the model with `scredge export`, which writes a float kappa on every node"

_CLASSES: dict[str, tuple[type, type]] = {}  # TensorRT module name -> (plugin, creator)
_CREATORS: dict[str, object] = {}  # TensorRT module name -> the registered creator
_LOCK = threading.Lock()


def register(trt: ModuleType | None = None):
    """Register the Python `Realign` creator (namespace "scr") once per process.

    Returns the creator TensorRT will use. When a `Realign` v1 creator is already in the
    registry (this one, or the C++ plugin library loaded first) that one is kept.
    """
    if trt is None:
        from scredge.plugins.trt import load_trt

        trt = load_trt()
    with _LOCK:
        if trt.__name__ in _CREATORS:
            return _CREATORS[trt.__name__]
        registry = trt.get_plugin_registry()
        # get_creator exists in both; tensorrt_rtx has no get_plugin_creator (IPluginV2 era)
        existing = registry.get_creator(NAME, VERSION, NAMESPACE)
        if existing is not None:
            _CREATORS[trt.__name__] = existing
            return existing
        creator = plugin_classes(trt)[1]()
        if not registry.register_creator(creator, NAMESPACE):
            raise ScredgeError("TensorRT refused to register the Realign plugin creator",
                               received=f"{trt.__name__} {trt.__version__}",
                               expected=f"{NAMESPACE}::{NAME} v{VERSION} registered")
        _CREATORS[trt.__name__] = creator  # the registry keeps only a C++ pointer
        return creator


def plugin_classes(trt: ModuleType) -> tuple[type, type]:
    """(RealignPlugin, RealignCreator) deriving from `trt`'s binding classes."""
    if trt.__name__ not in _CLASSES:
        _CLASSES[trt.__name__] = _define(trt)
    return _CLASSES[trt.__name__]


def read_kappa(fields) -> float:
    """kappa from a PluginFieldCollection: exactly one float32 scalar, else a ScredgeError.

    The parser passes a node's `kappa` attribute only when it exists, and converts it by its
    ONNX type (FLOAT -> FLOAT32, STRING -> CHAR, INT -> INT32), so a missing or mistyped
    attribute arrives here as an absent or wrongly typed field.
    """
    by_name = {f.name: f for f in fields}
    if "kappa" not in by_name:
        raise ScredgeError("Realign node has no kappa attribute",
                           received=f"fields {sorted(by_name)}",
                           expected="kappa: a float attribute (SCR_SPEC section 2)", fix=_REEXPORT)
    field = by_name["kappa"]
    kind = getattr(field.type, "name", str(field.type))
    data = field.data
    if kind != "FLOAT32" or len(data) != 1:
        raise ScredgeError("Realign node's kappa attribute has the wrong type",
                           received=f"{kind} field of {len(data)} element(s)",
                           expected="one FLOAT32 value (an ONNX float attribute)", fix=_REEXPORT)
    kappa = float(data[0])
    if not (math.isfinite(kappa) and kappa > 0.0):
        raise ScredgeError("Realign node's kappa must be a positive, finite float",
                           received=kappa, expected="0 < kappa < inf", fix=_REEXPORT)
    return kappa


def _define(trt: ModuleType) -> tuple[type, type]:
    """The plugin and creator classes for one TensorRT module (closes over `trt`)."""
    plugin = _plugin_class(trt)
    return plugin, _creator_class(trt, plugin)


@functools.cache
def _dtype_names(trt: ModuleType) -> dict:
    """The activation dtypes the kernels take: TensorRT DataType -> launch_plan's name."""
    return {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}


def _plugin_class(trt: ModuleType) -> type:
    """RealignPlugin deriving from `trt`'s IPluginV3 binding classes."""

    class RealignPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
                        trt.IPluginV3OneRuntime):
        """SCR_SPEC section 2: m, num_out, den_out from h, m_prev and the carries."""

        def __init__(self, kappa: float) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            # every binding attribute must be set explicitly on a Python plugin
            self.plugin_name, self.plugin_version = NAME, VERSION
            self.plugin_namespace = NAMESPACE
            self.num_outputs = len(OUTPUTS)
            self.timing_cache_id = ""  # kappa does not change timing: time one instance only
            self.kappa = kappa

        # -- core / any phase ---------------------------------------------------------------
        def get_capability_interface(self, capability):
            return self

        def clone(self):
            return RealignPlugin(self.kappa)

        def destroy(self) -> None:
            pass

        # -- build phase (CPU only: no CUDA call may happen here) ---------------------------
        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return _output_shapes(trt, inputs)

        def get_output_data_types(self, input_types):
            return _output_data_types(trt, input_types)

        def supports_format_combination(self, pos, in_out, num_inputs):
            return _supports_format_combination(trt, pos, in_out, num_inputs)

        def configure_plugin(self, inp, out) -> None:
            _configure_plugin(inp)

        def get_workspace_size(self, inp, out) -> int:
            from scredge.plugins.realign import launch_plan

            b, t, d = (int(n) for n in inp[0].max)
            return int(launch_plan.workspace_bytes(b, t, d))

        # -- runtime -------------------------------------------------------------------------
        def get_fields_to_serialize(self):
            import numpy as np

            return trt.PluginFieldCollection([trt.PluginField(
                "kappa", np.array([self.kappa], dtype=np.float32), trt.PluginFieldType.FLOAT32)])

        def attach_to_context(self, resource_context):
            return self.clone()

        def on_shape_change(self, inp, out) -> None:
            pass

        def set_tactic(self, tactic) -> None:
            pass  # no custom tactics

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream) -> None:
            _enqueue(trt, self.kappa, input_desc, inputs, outputs, workspace, stream)

    return RealignPlugin


def _creator_class(trt: ModuleType, plugin: type) -> type:
    """RealignCreator deriving from `trt`'s IPluginCreatorV3One, making `plugin`s."""
    import numpy as np

    class RealignCreator(trt.IPluginCreatorV3One):
        """Makes `RealignPlugin`s from ONNX node attributes (build) or an engine (runtime)."""

        def __init__(self) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_version, self.plugin_namespace = NAME, VERSION, NAMESPACE
            # the parser hands over only the attributes named here
            self.field_names = trt.PluginFieldCollection([
                trt.PluginField("kappa", np.array([], dtype=np.float32),
                                trt.PluginFieldType.FLOAT32)])

        def create_plugin(self, name, field_collection, phase):
            return plugin(read_kappa(field_collection))  # same in both phases

    return RealignCreator


# -- the plugin's methods that do more than return a value (build phase: no CUDA call) ----
def _output_shapes(trt: ModuleType, inputs) -> list:
    ranks = tuple(len(d) for d in inputs)
    if ranks != RANKS:
        raise ScredgeError(
            "Realign inputs have the wrong ranks",
            received=dict(zip(INPUTS, ranks)), expected=dict(zip(INPUTS, RANKS)),
            fix="h, m_prev [B,T,D]; num_in [B,D]; den_in [B,1]; w_r, w_g [D]; "
                "b_r, b_g [1] (SCR_SPEC section 2)")
    return [trt.DimsExprs(inputs[0]), trt.DimsExprs(inputs[2]),
            trt.DimsExprs(inputs[3])]


def _output_data_types(trt: ModuleType, input_types) -> list:
    FLOAT = trt.DataType.FLOAT
    types = list(input_types)
    if not (len(types) == len(INPUTS) and types[0] in _dtype_names(trt)
            and types[1] == types[0] and all(t == FLOAT for t in types[2:])):
        raise ScredgeError(
            "Realign input dtypes are not supported",
            received={n: t.name for n, t in zip(INPUTS, types)},
            expected="h and m_prev both float32 or both float16; num_in, den_in, "
                     "w_r, b_r, w_g, b_g float32 (SCR_SPEC section 2)",
            fix="export with `scredge export --dtype float32|float16`")
    return [types[0], FLOAT, FLOAT]


def _supports_format_combination(trt: ModuleType, pos, in_out, num_inputs) -> bool:
    desc = in_out[pos].desc
    if num_inputs != len(INPUTS) or desc.format != trt.TensorFormat.LINEAR:
        return False
    if pos in (0, 1, num_inputs):  # h, m_prev, m: X
        return desc.type in _dtype_names(trt) and desc.type == in_out[0].desc.type
    return desc.type == trt.DataType.FLOAT


def _configure_plugin(inp) -> None:
    """Check the profile's largest shapes once per profile, so that a bad model
    fails the build (get_workspace_size cannot: TensorRT reads its failure as 0)."""
    from scredge.plugins.realign import launch_plan

    shapes = {n: tuple(int(v) for v in desc.max) for n, desc in zip(INPUTS, inp)}
    b, t, d = shapes["h"]
    want = {"h": (b, t, d), "m_prev": (b, t, d), "num_in": (b, d), "den_in": (b, 1),
            "w_r": (d,), "b_r": (1,), "w_g": (d,), "b_g": (1,)}
    if shapes != want:
        raise ScredgeError(
            "Realign input shapes disagree (largest shapes of the profile)",
            received=shapes, expected=want, fix="SCR_SPEC section 2 gives the shapes")
    launch_plan.workspace_bytes(b, t, d)  # raises beyond the kernels' launch limits


def _enqueue(trt: ModuleType, kappa: float, input_desc, inputs, outputs, workspace,
             stream) -> None:
    """Launch the kernels (runtime: once per SCR layer per decode step)."""
    from scredge.plugins.realign import launch_plan

    b, t, d = (int(n) for n in input_desc[0].dims)
    ptrs = dict(zip(INPUTS, inputs)) | dict(zip(OUTPUTS, outputs))
    dtype = _dtype_names(trt)[input_desc[0].type]
    launches = launch_plan.plan(dtype, {k: int(v) for k, v in ptrs.items()}, b, t, d,
                                kappa, int(workspace))
    _launch(launches, int(stream))


# -- kernel launches (runtime only; enqueue runs once per SCR layer per decode step) ------
_FUNCTIONS: dict[int, dict[str, object]] = {}  # CUcontext handle -> kernel name -> CUfunction
_ARG_TYPES: dict[str, tuple] = {}  # kernel name -> its parameters' ctypes, in order
_INITIALIZED: list[bool] = []  # cuInit done (once per process is all the driver needs)


@functools.cache
def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as exc:  # cuda-python < 12.6.1 has no cuda.bindings
        raise ScredgeError(
            "the Python Realign plugin needs cuda-python to launch its kernels",
            received=f"ImportError: {exc}", expected="an importable cuda.bindings.driver",
            fix="pip install 'cuda-python>=12.6.1' (the scredge[gpu] extra)") from exc
    return driver


def _check(result):
    """cuda-python returns (CUresult, value...): raise on failure, return the value(s)."""
    cu = _driver()
    err, *values = result
    if err != cu.CUresult.CUDA_SUCCESS:
        _, name = cu.cuGetErrorName(err)
        raise RuntimeError(f"CUDA driver call failed: {name.decode() if name else err}")
    return values[0] if len(values) == 1 else tuple(values)


def _kernels() -> dict[str, object]:
    """The Realign kernels in the current context, loading the fatbin once per context."""
    cu = _driver()
    if not _INITIALIZED:
        _check(cu.cuInit(0))
        _INITIALIZED.append(True)
    context = int(_check(cu.cuCtxGetCurrent()))
    if context == 0:
        raise RuntimeError("Realign.enqueue ran without a current CUDA context")
    kernels = _FUNCTIONS.get(context)
    if kernels is not None:  # every call but the first in a context: no lock
        return kernels
    with _LOCK:
        if context not in _FUNCTIONS:
            from scredge.plugins.realign import build_kernels, launch_plan

            image = build_kernels.require_fatbin().read_bytes()
            module = _check(cu.cuModuleLoadData(image))  # kept for the process's lifetime
            _FUNCTIONS[context] = {n: _check(cu.cuModuleGetFunction(module, n.encode()))
                                   for n in launch_plan.kernel_names()}
        return _FUNCTIONS[context]


def _launch(launches, stream: int) -> None:
    from scredge.plugins.realign.launch_plan import ARG_CTYPES

    cu = _driver()
    kernels = _kernels()
    for k in launches:
        types = _ARG_TYPES.get(k.name)
        if types is None:
            types = _ARG_TYPES[k.name] = tuple(ARG_CTYPES[kind] for kind, _ in k.args)
        params = (tuple(v for _, v in k.args), types)
        _check(cu.cuLaunchKernel(kernels[k.name], *k.grid, *k.block, k.shared_bytes,
                                 cu.CUstream(stream), params, 0))
