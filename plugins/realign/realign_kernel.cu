// Fused `scr.Realign` (SCR_SPEC section 2): a reduce-then-scan over T in four kernels,
// and a single-kernel path for T == 1 (decode).
//
// The op is a prefix sum over tokens (N_t, Z_t) followed by an elementwise blend, so it
// is parallel over T like any scan: (1) per-token scalars e_t and beta_t, one warp per
// token reducing over D; (2) per-chunk totals of e_t*h_t (and of e_t, kept as an extra
// column D); (3) an exclusive scan of those totals across chunks, seeded with the
// carries num_in/den_in, which also yields num_out/den_out; (4) inside each chunk a
// block-level scan (threads over D coalesced, token segments combined through shared
// memory) that writes m. Everything is float32 inside; only m is cast back to X.
//
// Every kernel is `extern "C"` with pointer/int32/float32 parameters only, because the
// Python plugin launches them by name from a fatbin (launch_plan.py mirrors
// scr_realign_enqueue below; tests/plugins/test_kernel_build.py checks the signatures).
#include "realign_kernel.h"
#include "realign_math.h"  // the per-token formulas, shared with the onnxruntime CPU op

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>

namespace {

constexpr int kChunk = SCR_REALIGN_CHUNK;
constexpr int kTile = SCR_REALIGN_DTILE;
constexpr int kRows = SCR_REALIGN_ROWS;
constexpr int kSeg = kChunk / kRows;  // consecutive tokens one thread row owns in a chunk
constexpr int kTokenWarps = SCR_REALIGN_TOKEN_WARPS;
constexpr int kCarryPer = SCR_REALIGN_CARRY_PER_THREAD;
constexpr int kBlockThreads = kTile * kRows;
constexpr int kTokenThreads = 32 * kTokenWarps;
constexpr int kStepThreads = SCR_REALIGN_STEP_THREADS;
constexpr int kStepWarps = kStepThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

static_assert(kTile == 32, "a D tile is one warp wide, so each warp reads 32 consecutive columns");
static_assert(kChunk % kRows == 0, "every thread row owns the same number of tokens");
static_assert(kBlockThreads <= 1024 && kTokenThreads <= 1024 && kStepThreads <= 1024,
              "CUDA block size limit");
static_assert(kStepThreads % 32 == 0, "the single-token kernel reduces whole warps");

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }

__device__ __forceinline__ int num_chunks(int T) { return (T + kChunk - 1) / kChunk; }

// The per-token math shared by the scan path and the T == 1 path, so the two cannot drift.
// w_r.h and w_g.h over d = first, first + stride, ... < D, summed across the warp's lanes
// (every lane ends with the warp's totals).
template <typename X>
__device__ __forceinline__ void warp_dots(const X* __restrict__ row, const float* __restrict__ w_r,
    const float* __restrict__ w_g, int first, int stride, int D, float& sr, float& sg)
{
    sr = 0.f;
    sg = 0.f;
    for (int d = first; d < D; d += stride)
    {
        const float v = to_f32(row[d]);
        sr = fmaf(w_r[d], v, sr);
        sg = fmaf(w_g[d], v, sg);
    }
    for (int offset = 16; offset > 0; offset >>= 1)
    {
        sr += __shfl_xor_sync(kFullMask, sr, offset);
        sg += __shfl_xor_sync(kFullMask, sg, offset);
    }
}

// e_t, beta_t, the running sum and the blend: realign_math.h (one definition for the CUDA
// kernels here and the onnxruntime CPU op in realign_ort.cpp).
using scr_realign::accumulate;
using scr_realign::blend;
using scr_realign::gate;
using scr_realign::relevance_weight;

// (1) e_t and beta_t. One warp per token; lanes stride over D (coalesced).
template <typename X>
__device__ __forceinline__ void token_scalars(const X* __restrict__ h, const float* __restrict__ w_r,
    const float* __restrict__ b_r, const float* __restrict__ w_g, const float* __restrict__ b_g,
    float* __restrict__ e_out, float* __restrict__ beta_out, int n_tokens, int D, float kappa)
{
    const int lane = threadIdx.x & 31;
    const long long token = static_cast<long long>(blockIdx.x) * kTokenWarps + (threadIdx.x >> 5);
    if (token >= n_tokens)
        return;  // the whole warp leaves together; this kernel has no block barrier
    float sr, sg;
    warp_dots(h + token * D, w_r, w_g, lane, 32, D, sr, sg);  // h[b,t,:], token = b*T + t
    if (lane == 0)
    {
        e_out[token] = relevance_weight(sr, b_r[0], kappa);
        beta_out[token] = gate(sg, b_g[0]);
    }
}

// (2) S[b,c,d] = sum over the chunk's tokens of e_t*h_t[d]; column d == D sums e_t.
// Thread row y owns kSeg consecutive tokens (the same split the apply kernel uses).
template <typename X>
__device__ __forceinline__ void chunk_totals(
    const X* __restrict__ h, const float* __restrict__ e, float* __restrict__ sums, int T, int D)
{
    __shared__ float part[kRows][kTile + 1];
    const int c = blockIdx.x;
    const int b = blockIdx.z;
    const int d = blockIdx.y * kTile + threadIdx.x;
    const long long row0 = static_cast<long long>(b) * T;  // token index of (b, 0)
    const int t0 = c * kChunk + threadIdx.y * kSeg;
    float acc = 0.f;
    if (d <= D)
    {
#pragma unroll
        for (int k = 0; k < kSeg; ++k)
        {
            const int t = t0 + k;
            if (t < T)
            {
                const float v = d < D ? to_f32(h[(row0 + t) * D + d]) : 1.f;
                acc = fmaf(e[row0 + t], v, acc);
            }
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && d <= D)
    {
        float total = 0.f;
#pragma unroll
        for (int j = 0; j < kRows; ++j)
            total += part[j][threadIdx.x];
        sums[(static_cast<long long>(b) * num_chunks(T) + c) * (D + 1) + d] = total;
    }
}

// (4) m[b,t,d] for one chunk and one D tile: exclusive offsets of the thread rows from
// shared memory, plus the chunk's carried prefix, then a running sum through each segment.
template <typename X>
__device__ __forceinline__ void chunk_apply(const X* __restrict__ h, const X* m_prev,
    const float* __restrict__ e, const float* __restrict__ beta, const float* __restrict__ prefix,
    X* m, int T, int D)
{
    __shared__ float partNum[kRows][kTile + 1];
    __shared__ float partDen[kRows];
    const int c = blockIdx.x;
    const int b = blockIdx.z;
    const int d = blockIdx.y * kTile + threadIdx.x;
    const bool active = d < D;
    const long long row0 = static_cast<long long>(b) * T;
    const int t0 = c * kChunk + threadIdx.y * kSeg;

    // pass 1: load the segment once (h, e, m_prev stay in registers) and sum it
    float hv[kSeg], ev[kSeg], mv[kSeg];
    float segNum = 0.f, segDen = 0.f;
#pragma unroll
    for (int k = 0; k < kSeg; ++k)
    {
        const int t = t0 + k;
        const bool live = t < T;
        const long long i = (row0 + t) * D + d;
        ev[k] = live ? e[row0 + t] : 0.f;
        hv[k] = (live && active) ? to_f32(h[i]) : 0.f;
        mv[k] = (live && active) ? to_f32(m_prev[i]) : 0.f;
        segNum = fmaf(ev[k], hv[k], segNum);
        segDen += ev[k];
    }
    partNum[threadIdx.y][threadIdx.x] = segNum;
    if (threadIdx.x == 0)
        partDen[threadIdx.y] = segDen;  // the same for every column
    __syncthreads();

    // the running sums before this thread's first token: carried prefix + earlier rows
    const float* pre = prefix + (static_cast<long long>(b) * num_chunks(T) + c) * (D + 1);
    float before = 0.f, beforeDen = 0.f;
    for (int j = 0; j < static_cast<int>(threadIdx.y); ++j)
    {
        before += partNum[j][threadIdx.x];
        beforeDen += partDen[j];
    }
    float num = (active ? pre[d] : 0.f) + before;  // N_{t-1}
    float den = pre[D] + beforeDen;               // Z_{t-1}

    // pass 2: N_t, Z_t, c_t = N_t/Z_t, m_t = (1-beta_t)*m_prev_t + beta_t*c_t
#pragma unroll
    for (int k = 0; k < kSeg; ++k)
    {
        const int t = t0 + k;
        if (t < T)
        {
            num = accumulate(num, ev[k], hv[k]);
            den += ev[k];
            if (active)
                store(m + (row0 + t) * D + d, blend(mv[k], beta[row0 + t], num, den));
        }
    }
}

// T == 1 (every decode step): the whole op in one block per batch row. The four-kernel
// scan costs four launches and a workspace round trip for what is two dot products and an
// elementwise update; decode calls this once per SCR layer per token, so launches dominate.
template <typename X>
__device__ __forceinline__ void single_token(const X* __restrict__ h, const X* __restrict__ m_prev,
    const float* __restrict__ num_in, const float* __restrict__ den_in,
    const float* __restrict__ w_r, const float* __restrict__ b_r, const float* __restrict__ w_g,
    const float* __restrict__ b_g, X* __restrict__ m, float* __restrict__ num_out,
    float* __restrict__ den_out, int D, float kappa)
{
    __shared__ float partR[kStepWarps], partG[kStepWarps];
    __shared__ float scalars[3];  // e, beta, Z_0 = den_in + e
    const int b = blockIdx.x;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const long long row = static_cast<long long>(b) * D;
    float sr, sg;
    warp_dots(h + row, w_r, w_g, threadIdx.x, kStepThreads, D, sr, sg);
    if (lane == 0)
    {
        partR[warp] = sr;
        partG[warp] = sg;
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        float zr = 0.f, zg = 0.f;
        for (int w = 0; w < kStepWarps; ++w)
        {
            zr += partR[w];
            zg += partG[w];
        }
        const float e = relevance_weight(zr, b_r[0], kappa);
        const float den = den_in[b] + e;
        scalars[0] = e;
        scalars[1] = gate(zg, b_g[0]);
        scalars[2] = den;
        den_out[b] = den;
    }
    __syncthreads();
    const float e = scalars[0], beta = scalars[1], den = scalars[2];
    for (int d = threadIdx.x; d < D; d += kStepThreads)
    {
        const float num = accumulate(num_in[row + d], e, to_f32(h[row + d]));  // N_0 = num_in + e*h
        num_out[row + d] = num;
        store(m + row + d, blend(to_f32(m_prev[row + d]), beta, num, den));
    }
}

}  // namespace

// ---- extern "C" entry points: stable names, launched by name from the fatbin ----

extern "C" __global__ void __launch_bounds__(kStepThreads) scr_realign_step_f32(
    const float* h, const float* m_prev, const float* num_in, const float* den_in,
    const float* w_r, const float* b_r, const float* w_g, const float* b_g, float* m,
    float* num_out, float* den_out, int D, float kappa)
{
    single_token<float>(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, m, num_out, den_out, D,
                        kappa);
}

extern "C" __global__ void __launch_bounds__(kStepThreads) scr_realign_step_f16(
    const __half* h, const __half* m_prev, const float* num_in, const float* den_in,
    const float* w_r, const float* b_r, const float* w_g, const float* b_g, __half* m,
    float* num_out, float* den_out, int D, float kappa)
{
    single_token<__half>(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, m, num_out, den_out, D,
                         kappa);
}

extern "C" __global__ void __launch_bounds__(kTokenThreads) scr_realign_token_scalars_f32(
    const float* h, const float* w_r, const float* b_r, const float* w_g, const float* b_g,
    float* e, float* beta, int n_tokens, int D, float kappa)
{
    token_scalars<float>(h, w_r, b_r, w_g, b_g, e, beta, n_tokens, D, kappa);
}

extern "C" __global__ void __launch_bounds__(kTokenThreads) scr_realign_token_scalars_f16(
    const __half* h, const float* w_r, const float* b_r, const float* w_g, const float* b_g,
    float* e, float* beta, int n_tokens, int D, float kappa)
{
    token_scalars<__half>(h, w_r, b_r, w_g, b_g, e, beta, n_tokens, D, kappa);
}

extern "C" __global__ void __launch_bounds__(kBlockThreads) scr_realign_chunk_totals_f32(
    const float* h, const float* e, float* sums, int T, int D)
{
    chunk_totals<float>(h, e, sums, T, D);
}

extern "C" __global__ void __launch_bounds__(kBlockThreads) scr_realign_chunk_totals_f16(
    const __half* h, const float* e, float* sums, int T, int D)
{
    chunk_totals<__half>(h, e, sums, T, D);
}

// (3) For each (b, column): prefix[c] = carry_in + sum of totals of chunks < c, in place,
// kRows*kCarryPer chunks per step (each thread row scans kCarryPer consecutive chunks, rows
// combined through shared memory); the final sum is num_out (columns < D) or den_out.
extern "C" __global__ void __launch_bounds__(kBlockThreads) scr_realign_chunk_carries(
    float* sums, const float* num_in, const float* den_in, float* num_out, float* den_out,
    int T, int D)
{
    __shared__ float part[kRows][kTile + 1];
    const int b = blockIdx.y;
    const int d = blockIdx.x * kTile + threadIdx.x;
    const bool active = d <= D;
    const int nChunks = num_chunks(T);
    const long long width = D + 1;
    float* column = sums + static_cast<long long>(b) * nChunks * width + d;  // stride: width
    float carry = 0.f;
    if (active)
        carry = d < D ? num_in[static_cast<long long>(b) * D + d] : den_in[b];
    constexpr int kStep = kRows * kCarryPer;
    for (int c0 = 0; c0 < nChunks; c0 += kStep)
    {
        const int cFirst = c0 + threadIdx.y * kCarryPer;
        float v[kCarryPer];
        float local = 0.f;
#pragma unroll
        for (int k = 0; k < kCarryPer; ++k)
        {
            const int c = cFirst + k;
            v[k] = (active && c < nChunks) ? column[c * width] : 0.f;
            local += v[k];
        }
        part[threadIdx.y][threadIdx.x] = local;
        __syncthreads();
        float before = 0.f, step = 0.f;  // same order on every row: carry stays identical
        for (int j = 0; j < kRows; ++j)
        {
            const float p = part[j][threadIdx.x];
            if (j < static_cast<int>(threadIdx.y))
                before += p;
            step += p;
        }
        float running = carry + before;
#pragma unroll
        for (int k = 0; k < kCarryPer; ++k)
        {
            const int c = cFirst + k;
            if (active && c < nChunks)
                column[c * width] = running;  // exclusive: sums of earlier chunks only
            running += v[k];
        }
        carry += step;
        __syncthreads();  // part[] is rewritten by the next step
    }
    if (active && threadIdx.y == 0)
    {
        if (d < D)
            num_out[static_cast<long long>(b) * D + d] = carry;
        else
            den_out[b] = carry;
    }
}

extern "C" __global__ void __launch_bounds__(kBlockThreads) scr_realign_chunk_apply_f32(
    const float* h, const float* m_prev, const float* e, const float* beta, const float* prefix,
    float* m, int T, int D)
{
    chunk_apply<float>(h, m_prev, e, beta, prefix, m, T, D);
}

extern "C" __global__ void __launch_bounds__(kBlockThreads) scr_realign_chunk_apply_f16(
    const __half* h, const __half* m_prev, const float* e, const float* beta, const float* prefix,
    __half* m, int T, int D)
{
    chunk_apply<__half>(h, m_prev, e, beta, prefix, m, T, D);
}

// ---- host side: workspace layout and the launch sequence ----

namespace
{

size_t align_up(size_t bytes)
{
    return (bytes + SCR_REALIGN_WS_ALIGN - 1) / SCR_REALIGN_WS_ALIGN * SCR_REALIGN_WS_ALIGN;
}

int ceil_div(long long a, long long b)
{
    return static_cast<int>((a + b - 1) / b);
}

struct Layout
{
    size_t scalars;  // bytes of one [B*T] float32 region, aligned
    size_t sums;     // bytes of S [B, chunks, D+1] float32, aligned
};

Layout layout(int B, int T, int D)
{
    const size_t tokens = static_cast<size_t>(B) * static_cast<size_t>(T);
    const size_t chunks = static_cast<size_t>(ceil_div(T, kChunk));
    return Layout{align_up(tokens * sizeof(float)),
        align_up(static_cast<size_t>(B) * chunks * (static_cast<size_t>(D) + 1) * sizeof(float))};
}

// The limits every launch below respects (launch_plan.validate mirrors them).
bool valid_sizes(int B, int T, int D)
{
    if (B < 0 || T < 0 || D < 1)
        return false;
    if (static_cast<long long>(B) * T > INT_MAX)  // token index is int32 in the token kernel
        return false;
    if (B > SCR_REALIGN_MAX_GRID_YZ)  // gridDim.z (chunk kernels), gridDim.y (carries)
        return false;
    return ceil_div(static_cast<long long>(D) + 1, kTile) <= SCR_REALIGN_MAX_GRID_YZ;
}

}  // namespace

extern "C" size_t scr_realign_workspace_bytes(int B, int T, int D)
{
    if (!valid_sizes(B, T, D) || B == 0 || T <= 1)  // T == 1: the single-token kernel
        return 0;
    const Layout l = layout(B, T, D);
    return 2 * l.scalars + l.sums;
}

extern "C" int scr_realign_enqueue(scr_dtype_t dtype, const void* h, const void* m_prev,
    const float* num_in, const float* den_in, const float* w_r, const float* b_r, const float* w_g,
    const float* b_g, void* m, float* num_out, float* den_out, int B, int T, int D, float kappa,
    void* workspace, cudaStream_t stream)
{
    if ((dtype != SCR_FLOAT32 && dtype != SCR_FLOAT16) || !valid_sizes(B, T, D) || !(kappa > 0.f)
        || !isfinite(kappa))
        return static_cast<int>(cudaErrorInvalidValue);
    if (B == 0)
        return static_cast<int>(cudaSuccess);
    if (!num_in || !den_in || !num_out || !den_out)
        return static_cast<int>(cudaErrorInvalidValue);
    if (T > 0 && (!h || !m_prev || !w_r || !b_r || !w_g || !b_g || !m))
        return static_cast<int>(cudaErrorInvalidValue);
    if (T > 1 && !workspace)
        return static_cast<int>(cudaErrorInvalidValue);

    // Launched through cudaLaunchKernel with argument arrays, exactly as the Python plugin
    // launches the same kernels with cuLaunchKernel (launch_plan.py lists the same sequence).
    const Layout l = layout(B, T, D);
    char* ws = static_cast<char*>(workspace);
    float* e = reinterpret_cast<float*>(ws);                     // [B*T]
    float* beta = reinterpret_cast<float*>(ws + l.scalars);      // [B*T]
    float* sums = reinterpret_cast<float*>(ws + 2 * l.scalars);  // [B, chunks, D+1]
    int tokens = B * T;
    const int chunks = ceil_div(T, kChunk);
    const int tiles = ceil_div(D, kTile);
    const int tilesWithDen = ceil_div(static_cast<long long>(D) + 1, kTile);
    const dim3 block(kTile, kRows);
    const bool half = dtype == SCR_FLOAT16;
    cudaError_t status = cudaSuccess;

    if (T == 1)  // decode: one launch, no workspace
    {
        void* args[] = {&h, &m_prev, &num_in, &den_in, &w_r, &b_r, &w_g, &b_g, &m, &num_out,
            &den_out, &D, &kappa};
        status = cudaLaunchKernel(half ? reinterpret_cast<const void*>(scr_realign_step_f16)
                                       : reinterpret_cast<const void*>(scr_realign_step_f32),
            dim3(B), dim3(kStepThreads), args, 0, stream);
        return static_cast<int>(status);
    }

    if (T > 0)
    {
        void* args1[] = {&h, &w_r, &b_r, &w_g, &b_g, &e, &beta, &tokens, &D, &kappa};
        status = cudaLaunchKernel(half ? reinterpret_cast<const void*>(scr_realign_token_scalars_f16)
                                       : reinterpret_cast<const void*>(scr_realign_token_scalars_f32),
            dim3(ceil_div(tokens, kTokenWarps)), dim3(kTokenThreads), args1, 0, stream);
        if (status != cudaSuccess)
            return static_cast<int>(status);

        void* args2[] = {&h, &e, &sums, &T, &D};
        status = cudaLaunchKernel(half ? reinterpret_cast<const void*>(scr_realign_chunk_totals_f16)
                                       : reinterpret_cast<const void*>(scr_realign_chunk_totals_f32),
            dim3(chunks, tilesWithDen, B), block, args2, 0, stream);
        if (status != cudaSuccess)
            return static_cast<int>(status);
    }

    void* args3[] = {&sums, &num_in, &den_in, &num_out, &den_out, &T, &D};
    status = cudaLaunchKernel(reinterpret_cast<const void*>(scr_realign_chunk_carries),
        dim3(tilesWithDen, B), block, args3, 0, stream);
    if (status != cudaSuccess || T == 0)
        return static_cast<int>(status);

    void* args4[] = {&h, &m_prev, &e, &beta, &sums, &m, &T, &D};
    status = cudaLaunchKernel(half ? reinterpret_cast<const void*>(scr_realign_chunk_apply_f16)
                                   : reinterpret_cast<const void*>(scr_realign_chunk_apply_f32),
        dim3(chunks, tiles, B), block, args4, 0, stream);
    return static_cast<int>(status);
}
