// Drives libscr_realign_plugin.so through its IPluginV3 API the way TensorRT does, with mocks
// for the expression builder, logger, error recorder and resource context. Needs TensorRT
// headers, no GPU: enqueue must fail cleanly with a CUDA error, not crash.
// Usage: harness <path to libscr_realign_plugin.so>   (tests/plugins/test_plugin_api.py)
#include "RealignPlugin.h"

#include <NvInferRuntime.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

static int gFailures = 0;
#define CHECK(cond)                                                                                \
    do                                                                                             \
    {                                                                                              \
        if (!(cond))                                                                               \
        {                                                                                          \
            std::printf("FAIL line %d: %s\n", __LINE__, #cond);                                     \
            ++gFailures;                                                                           \
        }                                                                                          \
    } while (0)

struct Logger : ILogger
{
    std::vector<std::pair<Severity, std::string>> lines;
    void log(Severity s, char const* m) noexcept override
    {
        lines.emplace_back(s, m);
        std::printf("  [log %d] %s\n", int(s), m);
    }
    bool has(Severity s, char const* text) const
    {
        for (auto const& [sev, line] : lines)
            if (sev == s && line.find(text) != std::string::npos)
                return true;
        return false;
    }
    void clear() { lines.clear(); }
} gLogger;

struct Finder : ILoggerFinder
{
    ILogger* findLogger() override { return &gLogger; }
} gFinder;

struct Recorder : IErrorRecorder
{
    std::vector<std::string> errors;
    int32_t getNbErrors() const noexcept override { return int32_t(errors.size()); }
    ErrorCode getErrorCode(int32_t) const noexcept override { return ErrorCode::kINVALID_ARGUMENT; }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override { return errors[i].c_str(); }
    bool hasOverflowed() const noexcept override { return false; }
    void clear() noexcept override { errors.clear(); }
    bool reportError(ErrorCode, ErrorDesc d) noexcept override { errors.emplace_back(d); return true; }
    RefCount incRefCount() noexcept override { return 1; }
    RefCount decRefCount() noexcept override { return 0; }
} gRecorder;

struct Context : IPluginResourceContext
{
    IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    IErrorRecorder* getErrorRecorder() const noexcept override { return &gRecorder; }
} gContext;

struct DimImpl : apiv::VDimensionExpr
{
    bool constant{};
    int64_t value{};
    bool isConstant() const override { return constant; }
    int64_t getConstantValue() const override { return value; }
    bool isSizeTensor() const override { return false; }
};
struct Dim : IDimensionExpr
{
    DimImpl impl;
    Dim(bool c, int64_t v) { impl.constant = c; impl.value = v; mImpl = &impl; }
};
struct BuilderImpl : apiv::VExprBuilder
{
    std::deque<Dim> pool;
    IDimensionExpr const* constant(int64_t v) override { return &pool.emplace_back(true, v); }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
};
struct Builder : IExprBuilder
{
    BuilderImpl impl;
    Builder() { mImpl = &impl; }
};

// -1 = dynamic
static DimsExprs exprs(BuilderImpl& b, std::vector<int64_t> dims)
{
    DimsExprs e{};
    e.nbDims = int32_t(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
        e.d[i] = &b.pool.emplace_back(dims[i] >= 0, dims[i]);
    return e;
}

static Dims dimsOf(std::vector<int64_t> v)
{
    Dims d{};
    d.nbDims = int32_t(v.size());
    for (size_t i = 0; i < v.size(); ++i)
        d.d[i] = v[i];
    return d;
}

static std::vector<std::vector<int64_t>> shapes(int64_t B, int64_t T, int64_t D)
{
    return {{B, T, D}, {B, T, D}, {B, D}, {B, 1}, {D}, {1}, {D}, {1}};
}

int main(int argc, char** argv)
{
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib)
    {
        std::printf("dlopen failed: %s\n", dlerror());
        return 2;
    }
    auto setFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(lib, "setLoggerFinder"));
    auto getCreators = reinterpret_cast<IPluginCreatorInterface* const* (*)(int32_t&)>(dlsym(lib, "getCreators"));
    CHECK(setFinder && getCreators);
    setFinder(&gFinder);
    int32_t n = 0;
    IPluginCreatorInterface* const* list = getCreators(n);
    CHECK(n == 1);
    CHECK(std::strcmp(list[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(list[0]);
    CHECK(std::string(creator->getPluginName()) == "Realign");
    CHECK(std::string(creator->getPluginVersion()) == "1");
    CHECK(std::string(creator->getPluginNamespace()) == "scr");
    PluginFieldCollection const* names = creator->getFieldNames();
    CHECK(names->nbFields == 1 && std::string(names->fields[0].name) == "kappa"
        && names->fields[0].type == PluginFieldType::kFLOAT32);

    std::puts("createPlugin: missing kappa, wrong type, bad value");
    PluginFieldCollection empty{0, nullptr};
    CHECK(creator->createPlugin("layer0", &empty, TensorRTPhase::kBUILD) == nullptr);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "missing field 'kappa'"));
    CHECK(creator->createPlugin("layer0", nullptr, TensorRTPhase::kBUILD) == nullptr);
    double k64 = 8.0;
    PluginField f64("kappa", &k64, PluginFieldType::kFLOAT64, 1);
    PluginFieldCollection c64{1, &f64};
    gLogger.clear();
    CHECK(creator->createPlugin("layer0", &c64, TensorRTPhase::kBUILD) == nullptr);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "must be one kFLOAT32 value; received kFLOAT64"));
    float neg = -1.f;
    PluginField fneg("kappa", &neg, PluginFieldType::kFLOAT32, 1);
    PluginFieldCollection cneg{1, &fneg};
    CHECK(creator->createPlugin("layer0", &cneg, TensorRTPhase::kBUILD) == nullptr);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "positive finite"));

    std::puts("createPlugin: good kappa plus an unknown field");
    float kappa = 8.f;
    char const ns[] = "scr";
    PluginField good[2] = {PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, 4),
        PluginField("kappa", &kappa, PluginFieldType::kFLOAT32, 1)};
    PluginFieldCollection cgood{2, good};
    gLogger.clear();
    IPluginV3* plugin = creator->createPlugin("layer0", &cgood, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    CHECK(gLogger.has(ILogger::Severity::kWARNING, "ignoring unknown field 'plugin_namespace'"));
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(std::string(core->getPluginName()) == "Realign" && std::string(core->getPluginNamespace()) == "scr");
    CHECK(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    CHECK(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    CHECK(build->getNbOutputs() == 3);

    std::puts("getOutputDataTypes");
    DataType in16[8] = {DataType::kHALF, DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT,
        DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
    DataType out[3];
    CHECK(build->getOutputDataTypes(out, 3, in16, 8) == 0);
    CHECK(out[0] == DataType::kHALF && out[1] == DataType::kFLOAT && out[2] == DataType::kFLOAT);
    DataType bad[8];
    std::memcpy(bad, in16, sizeof bad);
    bad[0] = bad[1] = DataType::kBF16;
    gLogger.clear();
    CHECK(build->getOutputDataTypes(out, 3, bad, 8) != 0);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "input 0 (h) must be float32 or float16; received bfloat16"));
    std::memcpy(bad, in16, sizeof bad);
    bad[3] = DataType::kHALF;
    CHECK(build->getOutputDataTypes(out, 3, bad, 8) != 0);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "input 3 (den_in) must be float32"));

    std::puts("supportsFormatCombination");
    DynamicPluginTensorDesc io[11]{};
    for (auto& d : io)
    {
        d.desc.format = TensorFormat::kLINEAR;
        d.desc.type = DataType::kFLOAT;
    }
    io[0].desc.type = io[1].desc.type = io[8].desc.type = DataType::kHALF;
    for (int pos = 0; pos < 11; ++pos)
        CHECK(build->supportsFormatCombination(pos, io, 8, 3));
    io[1].desc.type = DataType::kFLOAT;
    CHECK(!build->supportsFormatCombination(1, io, 8, 3));
    io[1].desc.type = DataType::kHALF;
    io[9].desc.type = DataType::kHALF;
    CHECK(!build->supportsFormatCombination(9, io, 8, 3));
    io[9].desc.type = DataType::kFLOAT;
    io[0].desc.type = DataType::kINT8;
    CHECK(!build->supportsFormatCombination(0, io, 8, 3));
    io[0].desc.type = DataType::kFLOAT;
    io[0].desc.format = TensorFormat::kCHW32;
    CHECK(!build->supportsFormatCombination(0, io, 8, 3));

    std::puts("getOutputShapes");
    Builder eb;
    DimsExprs ins[8], outs[3];
    auto sh = shapes(-1, -1, 33);
    for (int i = 0; i < 8; ++i)
        ins[i] = exprs(eb.impl, sh[i]);
    CHECK(build->getOutputShapes(ins, 8, nullptr, 0, outs, 3, eb) == 0);
    CHECK(outs[0].nbDims == 3 && outs[0].d[2]->getConstantValue() == 33 && !outs[0].d[0]->isConstant());
    CHECK(outs[1].nbDims == 2 && outs[1].d[0] == ins[0].d[0] && outs[1].d[1]->getConstantValue() == 33);
    CHECK(outs[2].nbDims == 2 && outs[2].d[0] == ins[0].d[0] && outs[2].d[1]->isConstant()
        && outs[2].d[1]->getConstantValue() == 1);
    ins[4] = exprs(eb.impl, {32});
    gLogger.clear();
    CHECK(build->getOutputShapes(ins, 8, nullptr, 0, outs, 3, eb) != 0);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "input 4 (w_r) has shape [32]; expected [33]"));
    ins[4] = exprs(eb.impl, {33});
    ins[3] = exprs(eb.impl, {-1, 2});
    CHECK(build->getOutputShapes(ins, 8, nullptr, 0, outs, 3, eb) != 0);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "input 3 (den_in) has shape [?,2]; expected [?,1]"));
    ins[3] = exprs(eb.impl, {-1, 1, 1});
    CHECK(build->getOutputShapes(ins, 8, nullptr, 0, outs, 3, eb) != 0);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "input 3 (den_in) must have rank 2"));

    std::puts("configurePlugin / getWorkspaceSize");
    DynamicPluginTensorDesc cin[8]{}, cout[3]{};
    auto minS = shapes(1, 1, 33), maxS = shapes(2, 300, 33), dynS = shapes(-1, -1, 33);
    for (int i = 0; i < 8; ++i)
    {
        cin[i].desc.dims = dimsOf(dynS[i]);
        cin[i].desc.type = i < 2 ? DataType::kHALF : DataType::kFLOAT;
        cin[i].desc.format = TensorFormat::kLINEAR;
        cin[i].min = dimsOf(minS[i]);
        cin[i].max = dimsOf(maxS[i]);
    }
    CHECK(build->configurePlugin(cin, 8, cout, 3) == 0);
    size_t const expectedWorkspace = argc > 2 ? std::stoul(argv[2]) : 0;  // from launch_plan
    CHECK(build->getWorkspaceSize(cin, 8, cout, 3) == expectedWorkspace);
    cin[0].max = dimsOf({70000, 1, 33});
    gLogger.clear();
    CHECK(build->configurePlugin(cin, 8, cout, 3) != 0);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "exceeds the kernel's launch limits"));
    CHECK(build->getWorkspaceSize(cin, 8, cout, 3) == 0);
    cin[0].max = dimsOf(maxS[0]);
    cin[6].desc.dims = dimsOf({34});
    CHECK(build->configurePlugin(cin, 8, cout, 3) != 0);
    CHECK(gLogger.has(ILogger::Severity::kERROR, "input 6 (w_g) has shape [34]"));

    std::puts("serialization round trip and clone");
    PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
    CHECK(ser->nbFields == 1 && std::string(ser->fields[0].name) == "kappa"
        && ser->fields[0].type == PluginFieldType::kFLOAT32 && ser->fields[0].length == 1
        && *static_cast<float const*>(ser->fields[0].data) == 8.f);
    IPluginV3* revived = creator->createPlugin("layer0", ser, TensorRTPhase::kRUNTIME);
    CHECK(revived && static_cast<scr::RealignPlugin*>(revived)->kappa() == 8.f);
    IPluginV3* copy = plugin->clone();
    CHECK(copy && copy != plugin && static_cast<scr::RealignPlugin*>(copy)->kappa() == 8.f);
    delete plugin;  // the copy's fields must not point into the deleted original
    auto* copyRt = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(*static_cast<float const*>(copyRt->getFieldsToSerialize()->fields[0].data) == 8.f);

    std::puts("attachToContext / onShapeChange / enqueue that the launcher must refuse");
    IPluginV3* attached = copyRt->attachToContext(&gContext);
    CHECK(attached != nullptr);
    auto* rt = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc rin[8]{}, rout[3]{};
    auto conc = shapes(2, 300, 33);
    for (int i = 0; i < 8; ++i)
    {
        rin[i].dims = dimsOf(conc[i]);
        rin[i].type = i < 2 ? DataType::kHALF : DataType::kFLOAT;
        rin[i].format = TensorFormat::kLINEAR;
    }
    CHECK(rt->onShapeChange(rin, 8, rout, 3) == 0);
    rin[2].dims = dimsOf({3, 33});
    CHECK(rt->onShapeChange(rin, 8, rout, 3) != 0);
    CHECK(!gRecorder.errors.empty()
        && gRecorder.errors.back().find("input 2 (num_in) has shape [3,33]") != std::string::npos);
    rin[2].dims = dimsOf(conc[2]);
    // null buffers: scr_realign_enqueue answers cudaErrorInvalidValue before any launch, on any
    // machine, and the plugin must report it rather than crash
    void const* inPtrs[8] = {};
    void* outPtrs[3] = {};
    gRecorder.clear();
    int32_t status = rt->enqueue(rin, rout, inPtrs, outPtrs, nullptr, nullptr);
    std::printf("  enqueue status %d\n", status);
    CHECK(status == 1);  // cudaErrorInvalidValue
    CHECK(!gRecorder.errors.empty()
        && gRecorder.errors.back().find("kernel launch failed for h of shape [2,300,33]") != std::string::npos);

    delete attached;
    delete copy;
    delete revived;
    std::printf("%s (%d failures)\n", gFailures ? "FAILED" : "ALL CHECKS PASSED", gFailures);
    return gFailures ? 1 : 0;
}
