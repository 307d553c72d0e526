// TensorRT IPluginV3 `scr::Realign` v1: shape/type contract, serialization and the call
// into scr_realign_enqueue. Every user mistake (missing or mistyped kappa, wrong dtypes,
// wrong shapes, shapes past the kernel's launch limits) is reported through the TensorRT
// logger and, once attached to an execution context, its error recorder; nothing throws
// across the API and nothing aborts.
//
// Loading (see README.md): the exported `getCreators` / `setLoggerFinder` serve
// `trtexec --dynamicPlugins`, IPluginRegistry::loadLibrary and Python's
// `get_plugin_registry().load_library`. Built with SCR_REALIGN_STATIC_REGISTRATION, the
// library also registers itself when loaded (the REGISTER_TENSORRT_PLUGIN pattern) for
// `polygraphy --plugins`, `trtexec --staticPlugins` and ctypes.CDLL. Not both by default:
// loadLibrary refuses a library whose creators are already registered.
#include "RealignPlugin.h"

#include "realign_kernel.h"

#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <sstream>

#if defined(_WIN32)
#define SCR_EXPORT __declspec(dllexport)
#else
#define SCR_EXPORT __attribute__((visibility("default")))
#endif

using namespace nvinfer1;

namespace scr
{
namespace
{

char const* const kINPUT_NAMES[RealignPlugin::kNB_INPUTS]
    = {"h", "m_prev", "num_in", "den_in", "w_r", "b_r", "w_g", "b_g"};
int32_t const kINPUT_RANKS[RealignPlugin::kNB_INPUTS] = {3, 3, 2, 2, 1, 1, 1, 1};
char const* const kKAPPA{"kappa"};

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

ILogger* pluginLogger() noexcept
{
    ILoggerFinder* finder = gLoggerFinder.load();
    ILogger* logger = finder ? finder->findLogger() : nullptr;
    return logger ? logger : getLogger();  // libnvinfer's logger when loaded without a finder
}

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const line = std::string{"[scr::Realign v1] "} + message;
        if (ILogger* logger = pluginLogger())
            logger->log(severity, line.c_str());
        else if (severity <= ILogger::Severity::kWARNING)
            std::fprintf(stderr, "%s\n", line.c_str());
    }
    catch (std::exception const&)
    {
        // out of memory while formatting: nothing left to report with
    }
}

std::string typeName(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    case DataType::kFP8: return "fp8";
    default: return "DataType(" + std::to_string(static_cast<int32_t>(type)) + ")";
    }
}

std::string fieldTypeName(PluginFieldType type)
{
    switch (type)
    {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kINT64: return "kINT64";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    default: return "PluginFieldType(" + std::to_string(static_cast<int32_t>(type)) + ")";
    }
}

std::string shapeString(Dims const& dims)
{
    std::ostringstream out;
    out << "[";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        out << (i ? "," : "");
        if (dims.d[i] < 0)
            out << "?";
        else
            out << dims.d[i];
    }
    out << "]";
    return out.str();
}

Dims makeDims(std::initializer_list<int64_t> values)
{
    Dims dims{};
    dims.nbDims = static_cast<int32_t>(values.size());
    int32_t i = 0;
    for (int64_t v : values)
        dims.d[i++] = v;
    return dims;
}

// "" when the eight input shapes agree with SCR_SPEC section 2; else what is wrong.
// A dimension < 0 is not known yet (build time) and agrees with anything.
std::string checkInputShapes(Dims const* dims, int32_t nbInputs)
{
    if (nbInputs != RealignPlugin::kNB_INPUTS)
        return "expected 8 inputs (h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g); received "
            + std::to_string(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i)
        if (dims[i].nbDims != kINPUT_RANKS[i])
            return "input " + std::to_string(i) + " (" + kINPUT_NAMES[i] + ") must have rank "
                + std::to_string(kINPUT_RANKS[i]) + "; received shape " + shapeString(dims[i]);
    int64_t const B = dims[0].d[0];
    int64_t const T = dims[0].d[1];
    int64_t const D = dims[0].d[2];
    Dims const expected[RealignPlugin::kNB_INPUTS] = {dims[0], makeDims({B, T, D}), makeDims({B, D}),
        makeDims({B, 1}), makeDims({D}), makeDims({1}), makeDims({D}), makeDims({1})};
    for (int32_t i = 1; i < nbInputs; ++i)
        for (int32_t a = 0; a < dims[i].nbDims; ++a)
        {
            int64_t const got = dims[i].d[a];
            int64_t const want = expected[i].d[a];
            if (got >= 0 && want >= 0 && got != want)
                return "input " + std::to_string(i) + " (" + kINPUT_NAMES[i] + ") has shape "
                    + shapeString(dims[i]) + "; expected " + shapeString(expected[i]) + " for h of shape "
                    + shapeString(dims[0]) + " (SCR_SPEC section 2)";
        }
    if (D == 0)
        return "h must have a model width D >= 1; received shape " + shapeString(dims[0]);
    return "";
}

// "" when scr_realign_enqueue can launch these sizes (its valid_sizes); else why not.
std::string checkLaunchLimits(int64_t B, int64_t T, int64_t D)
{
    int64_t const tiles = (D + 1 + SCR_REALIGN_DTILE - 1) / SCR_REALIGN_DTILE;
    if (B * T > INT_MAX || B > SCR_REALIGN_MAX_GRID_YZ || tiles > SCR_REALIGN_MAX_GRID_YZ)
        return "shape [B,T,D] = [" + std::to_string(B) + "," + std::to_string(T) + "," + std::to_string(D)
            + "] exceeds the kernel's launch limits (B*T <= 2^31-1, B <= 65535, D < 2097120); "
              "lower the optimization profile's max shape or split the call (the carries chain calls)";
    return "";
}

std::string checkInputTypes(DataType const* types, int32_t nbInputs)
{
    if (nbInputs != RealignPlugin::kNB_INPUTS)
        return "expected 8 inputs; received " + std::to_string(nbInputs);
    if (types[0] != DataType::kFLOAT && types[0] != DataType::kHALF)
        return "input 0 (h) must be float32 or float16; received " + typeName(types[0]);
    if (types[1] != types[0])
        return "input 1 (m_prev) must have h's type " + typeName(types[0]) + "; received " + typeName(types[1]);
    for (int32_t i = 2; i < nbInputs; ++i)
        if (types[i] != DataType::kFLOAT)
            return "input " + std::to_string(i) + " (" + kINPUT_NAMES[i] + ") must be float32; received "
                + typeName(types[i]);
    return "";
}

RealignPluginCreator& theCreator()
{
    static RealignPluginCreator creator;
    return creator;
}

std::string checkCounts(int32_t nbInputs, int32_t nbOutputs)
{
    if (nbInputs != RealignPlugin::kNB_INPUTS || nbOutputs != RealignPlugin::kNB_OUTPUTS)
        return "expected 8 inputs and 3 outputs; received " + std::to_string(nbInputs) + " and "
            + std::to_string(nbOutputs);
    return {};
}

// configurePlugin sees each input's description and the profile's range, whose largest
// shape must launch; onShapeChange sees the description of the call it is about to run.
PluginTensorDesc const& tensorDesc(DynamicPluginTensorDesc const& in)
{
    return in.desc;
}
PluginTensorDesc const& tensorDesc(PluginTensorDesc const& in)
{
    return in;
}
Dims const& launchShape(DynamicPluginTensorDesc const& h)
{
    return h.max;
}
Dims const& launchShape(PluginTensorDesc const& h)
{
    return h.dims;
}

// What configurePlugin and onShapeChange both check: the counts, types, then shapes, then
// the kernels' launch limits at h's launchShape.
template <typename Desc>
std::string checkCall(Desc const* in, int32_t nbInputs, int32_t nbOutputs)
{
    std::string problem = checkCounts(nbInputs, nbOutputs);
    if (!problem.empty())
        return problem;
    Dims dims[RealignPlugin::kNB_INPUTS];
    DataType types[RealignPlugin::kNB_INPUTS];
    for (int32_t i = 0; i < RealignPlugin::kNB_INPUTS; ++i)
    {
        dims[i] = tensorDesc(in[i]).dims;
        types[i] = tensorDesc(in[i]).type;
    }
    problem = checkInputTypes(types, RealignPlugin::kNB_INPUTS);
    if (problem.empty())
        problem = checkInputShapes(dims, RealignPlugin::kNB_INPUTS);
    Dims const& limit = launchShape(in[0]);
    if (problem.empty())
        problem = checkLaunchLimits(limit.d[0], limit.d[1], limit.d[2]);
    return problem;
}

}  // namespace

// ---- RealignPlugin ----

RealignPlugin::RealignPlugin(float kappa)
    : mKappa(kappa)
{
}

void RealignPlugin::reportError(std::string const& message) const noexcept
{
    logMessage(ILogger::Severity::kERROR, message);
    if (mRecorder)
    {
        try
        {
            std::string const line = std::string{"[scr::Realign v1] "} + message;
            mRecorder->reportError(ErrorCode::kINVALID_ARGUMENT, line.c_str());
        }
        catch (std::exception const&)
        {
            // already logged above
        }
    }
}

int32_t RealignPlugin::failIf(std::string const& problem) const noexcept
{
    if (problem.empty())
        return 0;
    reportError(problem);
    return -1;
}

IPluginCapability* RealignPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* RealignPlugin::clone() noexcept
{
    try
    {
        auto* copy = new RealignPlugin(mKappa);
        copy->mRecorder = mRecorder;
        return copy;
    }
    catch (std::exception const& e)
    {
        reportError(std::string{"clone failed: "} + e.what());
        return nullptr;
    }
}

char const* RealignPlugin::getPluginName() const noexcept
{
    return kREALIGN_NAME;
}

char const* RealignPlugin::getPluginVersion() const noexcept
{
    return kREALIGN_VERSION;
}

char const* RealignPlugin::getPluginNamespace() const noexcept
{
    return kREALIGN_NAMESPACE;
}

int32_t RealignPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t RealignPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    std::string const problem = nbOutputs != kNB_OUTPUTS
        ? "expected 3 outputs (m, num_out, den_out); received " + std::to_string(nbOutputs)
        : checkInputTypes(inputTypes, nbInputs);
    if (failIf(problem) != 0)
        return -1;
    outputTypes[0] = inputTypes[0];  // m in h's type
    outputTypes[1] = DataType::kFLOAT;
    outputTypes[2] = DataType::kFLOAT;
    return 0;
}

int32_t RealignPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (failIf(checkCounts(nbInputs, nbOutputs)) != 0)
            return -1;
        Dims known[kNB_INPUTS];  // the build-time constants; -1 where a dimension is dynamic
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            known[i].nbDims = inputs[i].nbDims;
            for (int32_t a = 0; a < inputs[i].nbDims && a < Dims::MAX_DIMS; ++a)
                known[i].d[a] = inputs[i].d[a]->isConstant() ? inputs[i].d[a]->getConstantValue() : -1;
        }
        if (failIf(checkInputShapes(known, nbInputs)) != 0)
            return -1;
        outputs[0] = inputs[0];  // m: [B,T,D]
        outputs[1].nbDims = 2;   // num_out: [B,D]
        outputs[1].d[0] = inputs[0].d[0];
        outputs[1].d[1] = inputs[0].d[2];
        outputs[2].nbDims = 2;   // den_out: [B,1]
        outputs[2].d[0] = inputs[0].d[0];
        outputs[2].d[1] = exprBuilder.constant(1);
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError(std::string{"getOutputShapes failed: "} + e.what());
        return -1;
    }
}

bool RealignPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0 || pos >= nbInputs + nbOutputs)
        return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
        return false;
    if (pos == 0)  // h
        return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    if (pos == 1 || pos == kNB_INPUTS)  // m_prev and output m follow h
        return desc.type == inOut[0].desc.type;
    return desc.type == DataType::kFLOAT;  // carries, weights, biases, num_out, den_out
}

int32_t RealignPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
    int32_t nbOutputs) noexcept
{
    try
    {
        return failIf(checkCall(in, nbInputs, nbOutputs));
    }
    catch (std::exception const& e)
    {
        reportError(std::string{"configurePlugin failed: "} + e.what());
        return -1;
    }
}

size_t RealignPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (nbInputs != kNB_INPUTS || inputs[0].max.nbDims != 3)
        return 0;
    Dims const& max = inputs[0].max;  // the workspace grows with every dimension
    if (!checkLaunchLimits(max.d[0], max.d[1], max.d[2]).empty() || max.d[0] < 0 || max.d[1] < 0 || max.d[2] < 0)
        return 0;  // configurePlugin has reported it
    return scr_realign_workspace_bytes(
        static_cast<int>(max.d[0]), static_cast<int>(max.d[1]), static_cast<int>(max.d[2]));
}

int32_t RealignPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        return failIf(checkCall(in, nbInputs, nbOutputs));
    }
    catch (std::exception const& e)
    {
        reportError(std::string{"onShapeChange failed: "} + e.what());
        return -1;
    }
}

int32_t RealignPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims const& h = inputDesc[0].dims;  // [B,T,D], checked by onShapeChange
    scr_dtype_t const dtype = inputDesc[0].type == DataType::kHALF ? SCR_FLOAT16 : SCR_FLOAT32;
    int const status = scr_realign_enqueue(dtype, inputs[0], inputs[1], static_cast<float const*>(inputs[2]),
        static_cast<float const*>(inputs[3]), static_cast<float const*>(inputs[4]),
        static_cast<float const*>(inputs[5]), static_cast<float const*>(inputs[6]),
        static_cast<float const*>(inputs[7]), outputs[0], static_cast<float*>(outputs[1]),
        static_cast<float*>(outputs[2]), static_cast<int>(h.d[0]), static_cast<int>(h.d[1]),
        static_cast<int>(h.d[2]), mKappa, workspace, stream);
    if (status != 0)
    {
        try
        {
            reportError("kernel launch failed for h of shape " + shapeString(h) + ": "
                + cudaGetErrorString(static_cast<cudaError_t>(status)));
        }
        catch (std::exception const&)
        {
            // the failure status below still reaches TensorRT
        }
    }
    return status;
}

IPluginV3* RealignPlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    auto* copy = static_cast<RealignPlugin*>(clone());
    if (copy && context)
        copy->mRecorder = context->getErrorRecorder();
    return copy;
}

PluginFieldCollection const* RealignPlugin::getFieldsToSerialize() noexcept
{
    // rebuilt on every call: the field points into this object, never into a clone's source
    mSerialFields.clear();
    mSerialFields.emplace_back(kKAPPA, &mKappa, PluginFieldType::kFLOAT32, 1);
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

// ---- RealignPluginCreator ----

RealignPluginCreator::RealignPluginCreator()
{
    mFields.emplace_back(kKAPPA, nullptr, PluginFieldType::kFLOAT32, 1);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
}

IPluginV3* RealignPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        std::string const layer = name ? name : "(unnamed)";
        bool found = false;
        float kappa = 0.f;
        int32_t const nbFields = fc ? fc->nbFields : 0;
        for (int32_t i = 0; i < nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (!field.name || std::strcmp(field.name, kKAPPA) != 0)
            {
                logMessage(ILogger::Severity::kWARNING,
                    "layer " + layer + ": ignoring unknown field '" + (field.name ? field.name : "") + "'");
                continue;
            }
            if (field.type != PluginFieldType::kFLOAT32 || field.length != 1 || field.data == nullptr)
            {
                logMessage(ILogger::Severity::kERROR,
                    "layer " + layer + ": field 'kappa' must be one kFLOAT32 value; received "
                        + fieldTypeName(field.type) + " with length " + std::to_string(field.length)
                        + (field.data ? "" : " and no data")
                        + " (an ONNX FLOAT attribute `kappa` becomes exactly that)");
                return nullptr;
            }
            std::memcpy(&kappa, field.data, sizeof(float));
            found = true;
        }
        if (!found)
        {
            logMessage(ILogger::Severity::kERROR,
                "layer " + layer + ": missing field 'kappa' (kFLOAT32); give the ONNX node a float "
                "attribute kappa (SCR_SPEC default 8.0)");
            return nullptr;
        }
        if (!std::isfinite(kappa) || kappa <= 0.f)
        {
            logMessage(ILogger::Severity::kERROR,
                "layer " + layer + ": kappa must be a positive finite float; received " + std::to_string(kappa));
            return nullptr;
        }
        return new RealignPlugin(kappa);
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, std::string{"createPlugin failed: "} + e.what());
        return nullptr;
    }
}

PluginFieldCollection const* RealignPluginCreator::getFieldNames() noexcept
{
    return &mCollection;
}

char const* RealignPluginCreator::getPluginName() const noexcept
{
    return kREALIGN_NAME;
}

char const* RealignPluginCreator::getPluginVersion() const noexcept
{
    return kREALIGN_VERSION;
}

char const* RealignPluginCreator::getPluginNamespace() const noexcept
{
    return kREALIGN_NAMESPACE;
}

#ifdef SCR_REALIGN_STATIC_REGISTRATION
namespace
{
// What REGISTER_TENSORRT_PLUGIN(RealignPluginCreator) does at load time, except that the
// namespace handed to the registry is the creator's own ("scr") rather than the macro's "",
// so no TensorRT version can register the plugin under a namespace the parser does not ask for.
struct StaticRegistration
{
    StaticRegistration()
    {
        if (!getPluginRegistry()->registerCreator(theCreator(), kREALIGN_NAMESPACE))
            logMessage(ILogger::Severity::kWARNING, "already registered; keeping the first registration");
    }
};
StaticRegistration const gStaticRegistration{};
}  // namespace
#endif

}  // namespace scr

// ---- entry points of a TensorRT plugin library (loadLibrary, trtexec --dynamicPlugins) ----

extern "C" SCR_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    scr::gLoggerFinder.store(finder);
}

extern "C" SCR_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&scr::theCreator()};
    nbCreators = 1;
    return creators;
}
