/* The per-token math of `scr.Realign` (SCR_SPEC section 2), one definition for every kernel.
 *
 * Included by realign_kernel.cu (the CUDA kernels of the TensorRT plugin and of the
 * onnxruntime CUDA op) and by realign_ort.cpp (the onnxruntime CPU op), so the GPU and CPU
 * kernels cannot drift: the same float32 formulas, the same operation order.
 *
 *   e_t    = exp(kappa*tanh((w_r.h_t + b_r)/kappa) - kappa)   relevance_weight
 *   beta_t = sigmoid(w_g.h_t + b_g)                           gate
 *   N_t    = N_{t-1} + e_t*h_t (fused multiply-add)           accumulate
 *   m_t    = (1 - beta_t)*m_prev_t + beta_t*(N_t/Z_t)          blend
 *
 * scr_realign_rows_host runs the whole op on the CPU, token after token (a sequential
 * prefix sum is the fastest scan on one core); the CUDA kernels run the same scan in
 * parallel (realign_kernel.cu).
 */
#ifndef SCR_REALIGN_MATH_H
#define SCR_REALIGN_MATH_H

#include <math.h>
#include <stddef.h>

#if defined(__CUDACC__)
#define SCR_REALIGN_HD __host__ __device__ __forceinline__
#else
#define SCR_REALIGN_HD inline
#endif

namespace scr_realign
{

// e_t = exp(r_t - kappa) with r_t = kappa*tanh(z/kappa), z = w_r.h_t + b_r: in (exp(-2kappa), 1],
// bounded for any |h| (6e4 included).
SCR_REALIGN_HD float relevance_weight(float dot, float b_r, float kappa)
{
    return expf(kappa * tanhf((dot + b_r) / kappa) - kappa);
}

// beta_t = sigmoid(w_g.h_t + b_g); exp overflow -> inf -> beta 0.
SCR_REALIGN_HD float gate(float dot, float b_g) { return 1.f / (1.f + expf(-(dot + b_g))); }

// N_t = N_{t-1} + e_t*h_t, one rounding.
SCR_REALIGN_HD float accumulate(float num, float e, float h) { return fmaf(e, h, num); }

// m_t = (1 - beta_t)*m_prev_t + beta_t*c_t, c_t = N_t/Z_t.
SCR_REALIGN_HD float blend(float m_prev, float beta, float num, float den)
{
    return (1.f - beta) * m_prev + beta * (num / den);
}

#if !defined(__CUDA_ARCH__)
// Tokens per block of the host scan: inside a block the running sums start from zero, and a
// finished block is added to the carried sum with Kahan compensation, so a sum over T tokens
// keeps about (T/CHUNK + CHUNK) roundings' worth of error instead of T (T = 1e6 included).
// The GPU scan splits T the same way (SCR_REALIGN_CHUNK = 128 in realign_kernel.h).
constexpr long long kHostChunk = 128;

// sum += v with compensation c (Kahan); v is reset to 0 for the next block.
inline void kahan_add(float& sum, float& c, float& v)
{
    const float y = v - c;
    const float t = sum + y;
    c = (t - sum) - y;
    sum = t;
    v = 0.f;
}

// w_r.x and w_g.x in kLanes interleaved partial sums (lane j: d = j, j + kLanes, ...),
// combined at the end, as the GPU's lanes are: the partial sums are independent, so the
// compiler keeps them in one vector register (a single running sum is one long chain).
inline void dots_host(const float* x, const float* w_r, const float* w_g, long long D,
    float& zr, float& zg)
{
    constexpr int kLanes = 8;
    float ar[kLanes] = {}, ag[kLanes] = {};
    long long d = 0;
    for (; d + kLanes <= D; d += kLanes)
        for (int j = 0; j < kLanes; ++j)
        {
            ar[j] = fmaf(w_r[d + j], x[d + j], ar[j]);
            ag[j] = fmaf(w_g[d + j], x[d + j], ag[j]);
        }
    for (int j = 0; d < D; ++d, ++j)
    {
        ar[j] = fmaf(w_r[d], x[d], ar[j]);
        ag[j] = fmaf(w_g[d], x[d], ag[j]);
    }
    zr = 0.f;
    zg = 0.f;
    for (int j = 0; j < kLanes; ++j)
    {
        zr += ar[j];
        zg += ag[j];
    }
}

// The whole op on the host for rows [b0, b1) of a [B,T,D] batch; all arithmetic float32.
// `Load(const X*, i)` -> float and `Store(X*, i, float)` convert X (float32 or float16).
// T == 0 copies the carries through. `scratch` holds 3*D floats.
template <typename X, typename Load, typename Store>
void scr_realign_rows_host(const X* h, const X* m_prev, const float* num_in, const float* den_in,
    const float* w_r, float b_r, const float* w_g, float b_g, X* m, float* num_out,
    float* den_out, long long b0, long long b1, long long T, long long D, float kappa,
    float* scratch, Load load, Store store)
{
    float* x = scratch;           // the token's h in float32
    float* part = scratch + D;    // sum of e*h over this block's tokens so far
    float* comp = scratch + 2 * D;  // Kahan compensation of the carried sum
    for (long long b = b0; b < b1; ++b)
    {
        float* base = num_out + b * D;  // num_in + the finished blocks
        for (long long d = 0; d < D; ++d)
        {
            base[d] = num_in[b * D + d];
            part[d] = comp[d] = 0.f;
        }
        float den_base = den_in[b], den_part = 0.f, den_comp = 0.f;
        for (long long t = 0; t < T; ++t)
        {
            const long long row = (b * T + t) * D;
            for (long long d = 0; d < D; ++d)
                x[d] = load(h, row + d);
            float zr, zg;
            dots_host(x, w_r, w_g, D, zr, zg);
            const float e = relevance_weight(zr, b_r, kappa);
            const float beta = gate(zg, b_g);
            den_part += e;
            const float den = den_base + den_part;
            for (long long d = 0; d < D; ++d)
            {
                part[d] = accumulate(part[d], e, x[d]);
                store(m, row + d, blend(load(m_prev, row + d), beta, base[d] + part[d], den));
            }
            if ((t + 1) % kHostChunk == 0 || t + 1 == T)  // close the block
            {
                for (long long d = 0; d < D; ++d)
                    kahan_add(base[d], comp[d], part[d]);
                kahan_add(den_base, den_comp, den_part);
            }
        }
        den_out[b] = den_base;
    }
}
#endif

}  // namespace scr_realign

#endif /* SCR_REALIGN_MATH_H */
