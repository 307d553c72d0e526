"""The exported `tiny` graph through TensorRT for RTX's real ONNX parser and builder, on the
CPU: the Python `Realign` plugin (plugin mode) and the inlined function (decomposed mode),
float32 and float16. Oracles: SCR_SPEC sections 2-3 and the TensorRT API's own verdicts
(parse / supports_model_v2 / build_serialized_network). Without a GPU no engine can be
deserialized or run: enqueue is checked against launch_plan with a faked CUDA driver, and
the kernels' numbers are left to the GPU tests."""

from __future__ import annotations

import ctypes

import onnx
import pytest
from onnx import TensorProto, helper

from scredge.artifact import read_config
from scredge.contract import GraphIO
from scredge.export.pipeline import export_artifact
from scredge.export.sources import from_preset
from scredge.plugins.onnx_modes import decomposed, for_plugin
from scredge.plugins.realign import build_kernels, launch_plan, python_plugin
from scredge.plugins.realign.python_plugin import plugin_classes, register

trt = pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install tensorrt-rtx-cu13)")

DTYPES = ("float32", "float16")
MODES = {"plugin": for_plugin, "decomposed": decomposed}
SWALLOWED = "[ERROR] Exception"  # how TensorRT reports an exception it caught in a plugin


@pytest.fixture(scope="module")
def tiny(rtx, tmp_path_factory):
    """The `tiny` preset exported once per dtype: {dtype: (SCRConfig, ModelProto)}."""
    source = from_preset("tiny")
    root = tmp_path_factory.mktemp("trt_rtx")
    out = {}
    for dtype in DTYPES:
        folder = export_artifact(source.model, root / dtype, dtype=dtype)
        config, raw = read_config(folder)  # TensorRT's graph: the concat form
        out[dtype] = (config, onnx.load(str(folder / raw["graphs"]["trt"])))
    return out


class Parsed:
    """A network parsed from `model`; keeps builder and parser alive as long as the network."""

    def __init__(self, model: onnx.ModelProto | None) -> None:
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.builder = trt.Builder(self.logger)
        self.network = self.builder.create_network(0)  # RTX networks are always strongly typed
        self.parser = trt.OnnxParser(self.network, self.logger)
        self.ok = model is not None and self.parser.parse(model.SerializeToString())
        self.errors = [_describe(self.parser.get_error(i)) for i in range(self.parser.num_errors)]

    def layers(self, layer_type) -> list[str]:
        layers = (self.network.get_layer(i) for i in range(self.network.num_layers))
        return [layer.name for layer in layers if layer.type == layer_type]


def _describe(error) -> str:
    return f"node {error.node()} '{error.node_name()}' ({error.node_operator()}): {error.desc()}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_plugin_mode_has_one_plugin_layer_per_scr_layer(tiny, dtype):
    """Oracle: SCR_SPEC section 2 (one Realign node per SCR layer, named after the node) and
    section 3 (the graph's inputs)."""
    config, model = tiny[dtype]
    parsed = Parsed(for_plugin(model))
    assert parsed.ok, parsed.errors
    assert parsed.layers(trt.LayerType.PLUGIN_V3) == [
        f"/model/layers.{i}/scr/Realign" for i in config.scr_layers]
    inputs = [parsed.network.get_input(i).name for i in range(parsed.network.num_inputs)]
    assert inputs == list(GraphIO.for_config(config).inputs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decomposed_mode_has_no_plugin_layer(tiny, dtype):
    """Oracle: the inlined function is standard ONNX only, so no plugin may be imported."""
    parsed = Parsed(decomposed(tiny[dtype][1]))
    assert parsed.ok, parsed.errors
    assert parsed.layers(trt.LayerType.PLUGIN_V3) == []
    assert parsed.layers(trt.LayerType.PLUGIN_V2) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parser_accepts_every_node(tiny, mode, dtype):
    """Oracle: the parser's own support query (supports_model_v2): one supported subgraph
    holding every node, and no parser error."""
    model = MODES[mode](tiny[dtype][1])
    fresh = Parsed(None)  # the parser must not outlive its network: keep `fresh` alive
    parser = fresh.parser
    supported = parser.supports_model_v2(model.SerializeToString())
    errors = [_describe(parser.get_error(i)) for i in range(parser.num_errors)]
    unsupported = [i for i in range(parser.num_subgraphs) if not parser.is_subgraph_supported(i)]
    assert supported and not errors and not unsupported, "\n".join(errors)
    assert parser.num_subgraphs == 1
    assert len(parser.get_subgraph_nodes(0)) == len(model.graph.node)


# dimension name (as exported, SCR_SPEC section 3) -> (min, opt, max); P <= W-1 = 127 for tiny
PROFILES = {  # attention_mask's axis is P + T (SCR_SPEC section 3, v2)
    "prefill": {"batch": (1, 1, 4), "sequence": (1, 64, 256), "past_sequence": (0, 0, 0),
                "past_sequence + sequence": (1, 64, 256)},
    "decode": {"batch": (1, 1, 4), "sequence": (1, 1, 1), "past_sequence": (0, 64, 127),
               "past_sequence + sequence": (1, 65, 128)},
}


def _profile(builder, network, model, dims):
    """An optimisation profile giving each dynamic input axis the range of its ONNX name."""
    names = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim]
             for v in model.graph.input}
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        axes = names[tensor.name]
        profile.set_shape(tensor.name, *(
            [n if n >= 0 else dims[axes[k]][which] for k, n in enumerate(tensor.shape)]
            for which in range(3)))
    return profile


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_engine_builds_and_serializes_on_the_cpu(tiny, mode, dtype, capfd):
    """Oracle: build_serialized_network with two profiles (prefill, decode) returns a plan,
    and no plugin method raised (TensorRT would only print it). In plugin mode the plan
    carries the plugin's identity and serialized field (name, namespace, kappa)."""
    config, model = tiny[dtype]
    assert PROFILES["decode"]["past_sequence"][2] == config.window - 1
    model = MODES[mode](model)
    parsed = Parsed(model)
    assert parsed.ok, parsed.errors
    build = parsed.builder.create_builder_config()
    build.builder_optimization_level = 0  # the fastest build (0 is accepted by RTX)
    build.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 64 << 20)
    for dims in PROFILES.values():
        assert build.add_optimization_profile(
            _profile(parsed.builder, parsed.network, model, dims)) >= 0
    blob = parsed.builder.build_serialized_network(parsed.network, build)
    assert blob is not None and blob.nbytes > 0
    assert SWALLOWED not in capfd.readouterr().err
    # Runtime.deserialize_cuda_engine needs a CUDA driver even to read a plan: without a
    # GPU it logs cudaError 35 ("driver version is insufficient") and returns None, and
    # get_engine_validity answers INVALID. So on the CPU we check what the plan must hold.
    if mode == "plugin":
        data = bytes(blob)
        assert data.count(b"Realign") >= len(config.scr_layers)
        assert b"kappa" in data and b"scr" in data


@pytest.mark.parametrize("defect", ["missing", "string"])
def test_bad_kappa_fails_the_parse(tiny, defect, capfd):
    """Oracle: SCR_SPEC section 2 (kappa is a float attribute); the creator's error names
    the defect and the parser fails on that node instead of crashing."""
    model = for_plugin(tiny["float32"][1])
    node = next(n for n in model.graph.node if n.op_type == "Realign")
    kept = [a for a in node.attribute if a.name != "kappa"]
    del node.attribute[:]
    node.attribute.extend(kept)
    if defect == "string":
        node.attribute.append(helper.make_attribute("kappa", "8.0"))
    parsed = Parsed(model)
    assert not parsed.ok
    assert any(node.name in e for e in parsed.errors), parsed.errors
    message = {"missing": "has no kappa attribute", "string": "kappa attribute has the wrong type"}
    assert message[defect] in capfd.readouterr().err


def _one_realign(h_type: int = TensorProto.FLOAT, m_type: int = TensorProto.FLOAT,
                 w_r_size: int = 8) -> onnx.ModelProto:
    """A graph with a single Realign node, D = 8, h and m_prev of the given ONNX types."""
    d, f32 = 8, TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("h", h_type, ["B", "T", d]),
              helper.make_tensor_value_info("m_prev", m_type, ["B", "T", d]),
              helper.make_tensor_value_info("num_in", f32, ["B", d]),
              helper.make_tensor_value_info("den_in", f32, ["B", 1])]
    params = [helper.make_tensor(n, f32, [size], [0.1] * size)
              for n, size in (("w_r", w_r_size), ("b_r", 1), ("w_g", d), ("b_g", 1))]
    outputs = [helper.make_tensor_value_info("m", h_type, ["B", "T", d]),
               helper.make_tensor_value_info("num_out", f32, ["B", d]),
               helper.make_tensor_value_info("den_out", f32, ["B", 1])]
    node = helper.make_node(
        "Realign", ["h", "m_prev", "num_in", "den_in", "w_r", "b_r", "w_g", "b_g"],
        ["m", "num_out", "den_out"], name="/realign", domain="scr", kappa=8.0,
        plugin_namespace="scr", plugin_version="1")
    graph = helper.make_graph([node], "one_realign", inputs, outputs, initializer=params)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("scr", 1)])


def _build_small(parsed, batch: int = 4):
    """Build a one-profile engine for a small hand-made graph (B, T in 1..batch)."""
    build = parsed.builder.create_builder_config()
    build.builder_optimization_level = 0
    profile = parsed.builder.create_optimization_profile()
    for i in range(parsed.network.num_inputs):
        tensor = parsed.network.get_input(i)
        low, high = ([n if n >= 0 else v for n in tensor.shape] for v in (1, batch))
        profile.set_shape(tensor.name, low, low, high)
    build.add_optimization_profile(profile)
    return parsed.builder.build_serialized_network(parsed.network, build)


@pytest.mark.parametrize(("h_type", "m_type", "accepted"), [
    (TensorProto.FLOAT, TensorProto.FLOAT, True),
    (TensorProto.FLOAT16, TensorProto.FLOAT16, True),
    (TensorProto.FLOAT16, TensorProto.FLOAT, False),
    (TensorProto.FLOAT, TensorProto.FLOAT16, False),
], ids=["f32", "f16", "h16-m32", "h32-m16"])
def test_mismatched_dtypes_fail_before_enqueue(rtx, h_type, m_type, accepted, capfd):
    """Oracle: SCR_SPEC section 2 (h, m_prev and m share one dtype X): a mismatch fails the
    parse with the plugin's message; matching dtypes parse and build (the control)."""
    parsed = Parsed(_one_realign(h_type, m_type))
    assert parsed.ok == accepted, parsed.errors
    if not accepted:
        assert any("/realign" in e for e in parsed.errors), parsed.errors
        assert "Realign input dtypes are not supported" in capfd.readouterr().err
        return
    assert _build_small(parsed) is not None
    assert SWALLOWED not in capfd.readouterr().err


@pytest.mark.parametrize(("w_r_size", "batch", "message"), [
    (7, 4, "Realign input shapes disagree"),  # w_r must have D = 8 elements
    (8, 70_000, "exceed the kernel's launch limits"),  # B beyond the kernels' grid
], ids=["w_r-size", "batch-limit"])
def test_bad_shapes_fail_the_build(rtx, w_r_size, batch, message, capfd):
    """Oracle: SCR_SPEC section 2's shapes and the kernels' launch limits (launch_plan):
    build_serialized_network returns None with the plugin's message, before any enqueue."""
    parsed = Parsed(_one_realign(w_r_size=w_r_size))
    assert parsed.ok, parsed.errors
    assert _build_small(parsed, batch) is None
    assert message in capfd.readouterr().err


def _descs(types):
    out = []
    for t in types:
        desc = trt.DynamicPluginTensorDesc()
        desc.desc.type, desc.desc.format = t, trt.TensorFormat.LINEAR
        out.append(desc)
    return out


def test_format_combinations(rtx):
    """Oracle: SCR_SPEC section 2's dtype table: inputs 0, 1 and output 0 share X in
    {float32, float16}; all other tensors float32; LINEAR only."""
    plugin_cls, _ = plugin_classes(trt)
    plugin = plugin_cls(kappa=8.0)
    f32, f16, i32 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
    for x in (f32, f16):
        good = _descs([x, x] + [f32] * 6 + [x, f32, f32])
        assert all(plugin.supports_format_combination(p, good, 8) for p in range(11))
    bad = _descs([f16, f32] + [f32] * 6 + [f16, f32, f32])
    assert not plugin.supports_format_combination(1, bad, 8)
    assert not plugin.supports_format_combination(0, _descs([i32] * 11), 8)
    assert not plugin.supports_format_combination(3, _descs([f32] * 3 + [f16] + [f32] * 7), 8)
    chw = _descs([f32] * 11)
    chw[0].desc.format = trt.TensorFormat.CHW32
    assert not plugin.supports_format_combination(0, chw, 8)


def test_serialized_fields_recreate_the_plugin(rtx):
    """Oracle: the engine stores get_fields_to_serialize(); the creator must rebuild the same
    plugin from them at runtime (TensorRTPhase.RUNTIME)."""
    plugin_cls, creator_cls = plugin_classes(trt)
    creator = creator_cls()
    assert [f.name for f in creator.field_names] == ["kappa"]
    fields = plugin_cls(kappa=5.5).get_fields_to_serialize()
    again = creator.create_plugin("/x/Realign", fields, trt.TensorRTPhase.RUNTIME)
    assert again.kappa == 5.5
    assert (again.plugin_name, again.plugin_version, again.plugin_namespace) == (
        "Realign", "1", "scr")


def test_register_is_idempotent(rtx):
    """Oracle: the registry holds exactly one Realign v1 creator in namespace scr."""
    first, second = register(trt), register(trt)
    assert first is second
    creator = trt.get_plugin_registry().get_creator("Realign", "1", "scr")
    assert creator is not None and creator.name == "Realign"


class FakeDriver:
    """Stands in for cuda.bindings.driver on a machine without a GPU; records launches."""

    class CUresult:
        CUDA_SUCCESS = 0

    def __init__(self) -> None:
        self.context, self.loads, self.launches = 1, [], []

    def cuInit(self, flags):
        return (0,)

    def cuCtxGetCurrent(self):
        return (0, self.context)

    def cuModuleLoadData(self, image):
        self.loads.append((self.context, bytes(image)))
        return (0, f"module{len(self.loads)}")

    def cuModuleGetFunction(self, module, name):
        return (0, (module, name.decode()))

    def CUstream(self, handle):
        return ("stream", handle)

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        self.launches.append((f[1], (gx, gy, gz), (bx, by, bz), shared, stream, params, extra))
        return (0,)


def test_enqueue_launches_the_plan_on_the_given_stream(rtx, tmp_path, monkeypatch):
    """Oracle: launch_plan.plan (the C++ launcher's sequence as data): enqueue launches exactly
    those kernels with those arguments on TensorRT's stream and workspace, and loads the
    fatbin once per CUDA context. The CUDA driver is faked: no GPU here."""
    fake, fatbin = FakeDriver(), tmp_path / "realign.fatbin"
    fatbin.write_bytes(b"fatbin")
    monkeypatch.setattr(python_plugin, "_driver", lambda: fake)
    monkeypatch.setattr(python_plugin, "_FUNCTIONS", {})
    monkeypatch.setattr(build_kernels, "require_fatbin", lambda: fatbin)
    shapes = [(2, 5, 128), (2, 5, 128), (2, 128), (2, 1), (128,), (1,), (128,), (1,)]
    descs = []
    for k, shape in enumerate(shapes):
        desc = trt.PluginTensorDesc()
        desc.dims = trt.Dims(list(shape))
        desc.type = trt.DataType.HALF if k < 2 else trt.DataType.FLOAT
        descs.append(desc)
    plugin = plugin_classes(trt)[0](kappa=6.0)
    inputs, outputs = [1000 + 16 * k for k in range(8)], [2000, 3000, 4000]
    for context in (1, 1, 2):
        fake.context = context
        fake.launches.clear()
        plugin.enqueue(descs, descs[:1] + descs[2:4], inputs, outputs, 8192, 77)
        ptrs = dict(zip(python_plugin.INPUTS + python_plugin.OUTPUTS, inputs + outputs))
        want = launch_plan.plan("float16", ptrs, 2, 5, 128, 6.0, 8192)
        types = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "f32": ctypes.c_float}
        assert fake.launches == [
            (k.name, k.grid, k.block, k.shared_bytes, ("stream", 77),
             (tuple(v for _, v in k.args), tuple(types[t] for t, _ in k.args)), 0)
            for k in want]
    assert fake.loads == [(1, b"fatbin"), (2, b"fatbin")]
