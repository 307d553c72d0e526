// `scr.Realign` v1 (SCR_SPEC section 2) as an onnxruntime custom-op library.
//
// Loaded with SessionOptions.register_custom_ops_library(path); onnxruntime calls
// RegisterCustomOps, which adds the domain `scr` with op `Realign` (opset 1):
//   - CPUExecutionProvider: float32 and float16 I/O, float32 math, the per-token formulas
//     of realign_math.h (shared with the CUDA kernels), token after token per batch row;
//   - CUDAExecutionProvider (built with -DSCR_REALIGN_ORT_CUDA by nvcc, linked with
//     realign_kernel.cu): scr_realign_enqueue, the same launcher the TensorRT plugin uses,
//     on onnxruntime's compute stream with workspace from onnxruntime's CUDA allocator.
//
// The library does not link onnxruntime: every call goes through the OrtApi that the
// loading onnxruntime hands over (ORT_API_MANUAL_INIT). It asks for the API version of the
// headers it was compiled with (SCR_REALIGN_ORT_API, default ORT_API_VERSION); an older
// onnxruntime returns no such API, and registration fails with a status that names both
// versions (the caller falls back to the graph's function body).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include "realign_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#ifdef SCR_REALIGN_ORT_CUDA
#include "realign_kernel.h"
#include <cuda_runtime_api.h>
#endif

#ifndef SCR_REALIGN_ORT_API
#define SCR_REALIGN_ORT_API ORT_API_VERSION
#endif

#define SCR_STR2(x) #x
#define SCR_STR(x) SCR_STR2(x)

namespace
{

constexpr const char* kDomain = "scr";
constexpr const char* kOpName = "Realign";
constexpr float kDefaultKappa = 8.0f;
constexpr size_t kInputs = 8;   // h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g
constexpr size_t kOutputs = 3;  // m, num_out, den_out

// A shape: onnxruntime's own array of an input (not copied), or one of ours (at most 3 dims).
struct Dims
{
    const int64_t* d = nullptr;
    size_t n = 0;

    bool operator==(const Dims& o) const
    {
        return n == o.n && std::equal(d, d + n, o.d);
    }
};

template <typename X>
constexpr ONNXTensorElementDataType elem_type()
{
    return std::is_same<X, float>::value ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                         : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}

std::string dims(Dims s)
{
    std::string out = "[";
    for (size_t i = 0; i < s.n; ++i)
        out += (i ? "," : "") + std::to_string(s.d[i]);
    return out + "]";
}

[[noreturn]] void fail(const std::string& node, const std::string& what)
{
    throw Ort::Exception("scr.Realign node '" + node + "': " + what, ORT_INVALID_ARGUMENT);
}

// The shapes of SCR_SPEC section 2: h, m_prev [B,T,D]; num_in [B,D]; den_in [B,1];
// w_r, w_g [D]; b_r, b_g [1]. Nothing is allocated unless a shape is wrong: this runs once
// per node and token at decode, where a few µs are the whole op.
void check_shapes(const std::string& node, const Dims (&s)[kInputs])
{
    static const char* names[kInputs] = {"h", "m_prev", "num_in", "den_in", "w_r", "b_r", "w_g",
        "b_g"};
    if (s[0].n != 3)
        fail(node, "h must be [B,T,D], received " + dims(s[0]));
    const int64_t B = s[0].d[0], D = s[0].d[2], one = 1;
    const int64_t bd[2] = {B, D}, b1[2] = {B, one};
    const Dims want[kInputs] = {s[0], s[0], {bd, 2}, {b1, 2}, {&D, 1}, {&one, 1}, {&D, 1},
        {&one, 1}};
    for (size_t i = 1; i < kInputs; ++i)
        if (!(s[i] == want[i]))
            fail(node, std::string(names[i]) + " must be " + dims(want[i]) + ", received "
                           + dims(s[i]));
    if (D < 1 || B > INT32_MAX || s[0].d[1] > INT32_MAX || D > INT32_MAX)
        fail(node, "sizes out of range: h " + dims(s[0]));
}

float read_kappa(const OrtKernelInfo* info)
{
    float kappa = kDefaultKappa;  // SCR_SPEC: kappa defaults to 8.0
    OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_float(info, "kappa", &kappa);
    if (status)
        Ort::GetApi().ReleaseStatus(status);  // absent: the default
    if (!(kappa > 0.f) || !std::isfinite(kappa))
        throw Ort::Exception("scr.Realign: kappa must be positive and finite, received "
                                 + std::to_string(kappa), ORT_INVALID_ARGUMENT);
    return kappa;
}

// ---- CPU ----

inline float load(const float* p, long long i) { return p[i]; }
inline float load(const Ort::Float16_t* p, long long i) { return p[i].ToFloat(); }
inline void store(float* p, long long i, float v) { p[i] = v; }
inline void store(Ort::Float16_t* p, long long i, float v) { p[i] = Ort::Float16_t(v); }

template <typename X>
void rows_portable(const X* h, const X* mp, const float* ni, const float* di, const float* wr,
    float br, const float* wg, float bg, X* m, float* no, float* dout, long long B, long long T,
    long long D, float kappa, float* scratch)
{
    scr_realign::scr_realign_rows_host(h, mp, ni, di, wr, br, wg, bg, m, no, dout, 0LL, B, T, D,
        kappa, scratch, [](const X* p, long long i) { return load(p, i); },
        [](X* p, long long i, float v) { store(p, i, v); });
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same code with FMA and AVX2 enabled (x86-64 baseline has no fma instruction: fmaf
// would be a library call per element). Chosen at run time when the CPU has both.
template <typename X>
__attribute__((target("avx2,fma"), flatten)) void rows_fma(const X* h, const X* mp,
    const float* ni, const float* di, const float* wr, float br, const float* wg, float bg, X* m,
    float* no, float* dout, long long B, long long T, long long D, float kappa, float* scratch)
{
    scr_realign::scr_realign_rows_host(h, mp, ni, di, wr, br, wg, bg, m, no, dout, 0LL, B, T, D,
        kappa, scratch, [](const X* p, long long i) { return load(p, i); },
        [](X* p, long long i, float v) { store(p, i, v); });
}

bool cpu_has_fma()
{
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes;
}
#endif

// Every entry point onnxruntime calls returns a status, never throws: one conversion.
template <typename F>
OrtStatusPtr guarded(F&& body) noexcept
{
    try
    {
        body();
        return nullptr;
    }
    catch (const Ort::Exception& e)
    {
        return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    }
    catch (const std::exception& e)
    {
        return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
    }
}

// One node's call as every kernel (CPU and CUDA, float32 and float16) sees it: the eight
// inputs with their shapes checked against SCR_SPEC, the three outputs allocated (m as h,
// num_out as num_in, den_out as den_in), and B, T, D.
struct Call
{
    Ort::ConstValue in[kInputs];
    Ort::UnownedValue m, num, den;
    int64_t B = 0, T = 0, D = 0;

    Call(Ort::KernelContext& ctx, const std::string& node)
    {
        const OrtApi& api = Ort::GetApi();
        Dims shape[kInputs];
        for (size_t i = 0; i < kInputs; ++i)
        {
            in[i] = ctx.GetInput(i);
            ONNXTensorElementDataType type;  // checked by onnxruntime against the op's types
            // onnxruntime's own shape array (API 24+): GetTensorTypeAndShapeInfo would
            // allocate an info object and a vector per input and call
            Ort::ThrowOnError(api.GetTensorElementTypeAndShapeDataReference(in[i], &type,
                &shape[i].d, &shape[i].n));
        }
        check_shapes(node, shape);
        B = shape[0].d[0], T = shape[0].d[1], D = shape[0].d[2];
        m = ctx.GetOutput(0, shape[0].d, shape[0].n);
        num = ctx.GetOutput(1, shape[2].d, shape[2].n);
        den = ctx.GetOutput(2, shape[3].d, shape[3].n);
    }

    const float* f32(size_t i) const { return in[i].GetTensorData<float>(); }
};

// What onnxruntime calls on a kernel object: `Kernel::run(ctx, call)` under `guarded`.
template <typename Kernel>
struct KernelBase
{
    float kappa = kDefaultKappa;
    std::string node;

    OrtStatusPtr ComputeV2(OrtKernelContext* raw) noexcept
    {
        return guarded([&] {
            Ort::KernelContext ctx(raw);
            Call call(ctx, node);
            static_cast<Kernel*>(this)->run(ctx, call);
        });
    }
};

template <typename X>
struct CpuKernel : KernelBase<CpuKernel<X>>
{
    std::vector<float> scratch;

    void run(Ort::KernelContext&, Call& c)
    {
        if (c.B == 0)
            return;
        scratch.resize(3 * static_cast<size_t>(c.D));
        const X* h = c.T ? c.in[0].GetTensorData<X>() : nullptr;
        const X* mp = c.T ? c.in[1].GetTensorData<X>() : nullptr;
        X* mo = c.T ? c.m.GetTensorMutableData<X>() : nullptr;
        auto rows = &rows_portable<X>;
#if defined(__x86_64__) && defined(__GNUC__)
        if (cpu_has_fma())
            rows = &rows_fma<X>;
#endif
        rows(h, mp, c.f32(2), c.f32(3), c.f32(4), c.f32(5)[0], c.f32(6), c.f32(7)[0], mo,
            c.num.GetTensorMutableData<float>(), c.den.GetTensorMutableData<float>(), c.B, c.T,
            c.D, this->kappa, scratch.data());
    }
};

#ifdef SCR_REALIGN_ORT_CUDA
// ---- CUDA: the TensorRT plugin's launcher on onnxruntime's stream ----

template <typename X>
struct CudaKernel : KernelBase<CudaKernel<X>>
{
    void run(Ort::KernelContext& ctx, Call& c)
    {
        const int B = static_cast<int>(c.B), T = static_cast<int>(c.T), D = static_cast<int>(c.D);
        const size_t bytes = scr_realign_workspace_bytes(B, T, D);
        void* ws = nullptr;
        int device = 0;
        cudaGetDevice(&device);
        Ort::MemoryInfo info("Cuda", OrtDeviceAllocator, device, OrtMemTypeDefault);
        const OrtMemoryInfo* raw_info = info;
        Ort::Allocator alloc = ctx.GetAllocator(*raw_info);
        if (bytes)
            ws = alloc.Alloc(bytes);
        // freed after the launch: onnxruntime's CUDA provider runs its kernels on one stream,
        // so a later user of this block is ordered after our kernels
        const int rc = scr_realign_enqueue(std::is_same<X, float>::value ? SCR_FLOAT32 : SCR_FLOAT16,
            T ? c.in[0].GetTensorRawData() : nullptr, T ? c.in[1].GetTensorRawData() : nullptr,
            c.f32(2), c.f32(3), c.f32(4), c.f32(5), c.f32(6), c.f32(7),
            T ? c.m.GetTensorMutableRawData() : nullptr, c.num.GetTensorMutableData<float>(),
            c.den.GetTensorMutableData<float>(), B, T, D, this->kappa, ws,
            static_cast<cudaStream_t>(ctx.GetGPUComputeStream()));
        if (ws)
            alloc.Free(ws);
        if (rc != 0)
            throw Ort::Exception("scr.Realign node '" + this->node + "': CUDA launch failed: "
                                     + cudaGetErrorString(static_cast<cudaError_t>(rc)), ORT_FAIL);
    }
};
#endif

// ---- the op descriptions onnxruntime reads ----

template <typename X, template <typename> class Kernel>
struct RealignOp : Ort::CustomOpBase<RealignOp<X, Kernel>, Kernel<X>, true>
{
    const char* provider;

    explicit RealignOp(const char* ep) : provider(ep)
    {
        this->InferOutputShapeFn = &infer;  // types and shapes pass through (see infer)
    }

    OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** out) const noexcept
    {
        return guarded([&] {
            const float kappa = read_kappa(info);  // may throw: before anything is allocated
            auto* k = new Kernel<X>();
            k->kappa = kappa;
            k->node = Ort::ConstKernelInfo(info).GetNodeName();
            *out = k;
        });
    }

    const char* GetName() const { return kOpName; }
    const char* GetExecutionProviderType() const { return provider; }
    size_t GetInputTypeCount() const { return kInputs; }
    size_t GetOutputTypeCount() const { return kOutputs; }
    ONNXTensorElementDataType GetInputType(size_t i) const
    {
        return i < 2 ? elem_type<X>() : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    ONNXTensorElementDataType GetOutputType(size_t i) const
    {
        return i == 0 ? elem_type<X>() : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }

    // m takes h's type and shape, num_out num_in's, den_out den_in's. Written against the C
    // API so one function serves both dtype variants (onnxruntime keeps one per op name).
    static OrtStatusPtr ORT_API_CALL infer(const OrtCustomOp*, OrtShapeInferContext* ctx)
    {
        const OrtApi& api = Ort::GetApi();
        static const size_t source[kOutputs] = {0, 2, 3};
        for (size_t o = 0; o < kOutputs; ++o)
        {
            OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
            if (OrtStatusPtr s = api.ShapeInferContext_GetInputTypeShape(ctx, source[o], &info))
                return s;
            if (OrtStatusPtr s = api.ShapeInferContext_SetOutputTypeShape(ctx, o, info))
                return s;
        }
        return nullptr;
    }
};

// Alive as long as the library: onnxruntime keeps pointers to the ops and the domains.
RealignOp<float, CpuKernel> cpu_f32(nullptr);
RealignOp<Ort::Float16_t, CpuKernel> cpu_f16(nullptr);
#ifdef SCR_REALIGN_ORT_CUDA
RealignOp<float, CudaKernel> cuda_f32("CUDAExecutionProvider");
RealignOp<Ort::Float16_t, CudaKernel> cuda_f16("CUDAExecutionProvider");
#endif

OrtStatus* register_ops(const OrtApi* api, OrtSessionOptions* options)
{
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* s = api->CreateCustomOpDomain(kDomain, &domain))
        return s;
    static std::vector<OrtCustomOpDomain*> keep;  // one per registration, never released
    keep.push_back(domain);
    OrtCustomOp* ops[] = {&cpu_f32, &cpu_f16,
#ifdef SCR_REALIGN_ORT_CUDA
        &cuda_f32, &cuda_f16,
#endif
    };
    for (OrtCustomOp* op : ops)
        if (OrtStatus* s = api->CustomOpDomain_Add(domain, op))
            return s;
    return api->AddCustomOpDomain(options, domain);
}

}  // namespace

extern "C" {

// What this build asks of onnxruntime (read by the runtime before loading, through ctypes).
ORT_EXPORT int scr_realign_ort_api_version(void) { return SCR_REALIGN_ORT_API; }
ORT_EXPORT int scr_realign_ort_has_cuda(void)
{
#ifdef SCR_REALIGN_ORT_CUDA
    return 1;
#else
    return 0;
#endif
}

ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
    const OrtApiBase* api_base)
{
    const OrtApi* api = api_base->GetApi(SCR_REALIGN_ORT_API);
    if (!api)
    {
        // Older onnxruntime: no API of our version. Version 1 always exists and has
        // CreateStatus at the same place (the OrtApi table only grows), so report through it.
        const OrtApi* v1 = api_base->GetApi(1);
        const std::string msg = std::string("scr_realign_ort: this library was built against "
            "onnxruntime API version " SCR_STR(SCR_REALIGN_ORT_API) " and this onnxruntime (")
            + api_base->GetVersionString() + ") does not provide it; rebuild the library "
            "against this onnxruntime's headers (make kernels) or upgrade onnxruntime";
        return v1 ? v1->CreateStatus(ORT_NOT_IMPLEMENTED, msg.c_str()) : nullptr;
    }
    Ort::InitApi(api);
    try
    {
        return register_ops(api, options);
    }
    catch (const std::exception& e)
    {
        return api->CreateStatus(ORT_FAIL, e.what());
    }
}

}  // extern "C"
