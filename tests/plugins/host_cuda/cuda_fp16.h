// Host stand-in for cuda_fp16.h: IEEE binary16 stored in 16 bits, converted by hand
// (round to nearest even, like __float2half_rn), so any C++17 compiler builds it.
#ifndef SCR_HOST_CUDA_FP16_H
#define SCR_HOST_CUDA_FP16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

struct __half
{
    uint16_t bits;
};

inline float __half2float(__half h)
{
    uint32_t const sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    uint32_t const exponent = (h.bits >> 10) & 0x1fu;
    uint32_t const mantissa = h.bits & 0x3ffu;
    if (exponent == 0)  // zero or subnormal: mantissa * 2^-24
    {
        float const magnitude = ldexpf(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    uint32_t const bits = exponent == 31 ? (sign | 0x7f800000u | (mantissa << 13))  // inf, NaN
                                         : (sign | ((exponent + 112) << 23) | (mantissa << 13));
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

inline __half __float2half_rn(float value)
{
    uint32_t x;
    memcpy(&x, &value, sizeof x);
    uint16_t const sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    uint32_t const magnitude = x & 0x7fffffffu;
    uint16_t bits;
    if (magnitude >= 0x7f800000u)  // inf or NaN
        bits = magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u;
    else if (magnitude >= 0x477ff000u)  // >= 65520 rounds to inf
        bits = 0x7c00u;
    else if (magnitude < 0x38800000u)  // below 2^-14: a subnormal half, exactly x * 2^24 rounded
    {
        float m;
        memcpy(&m, &magnitude, sizeof m);
        bits = static_cast<uint16_t>(nearbyintf(m * 16777216.0f));
    }
    else
    {
        uint32_t const mantissa = magnitude & 0x7fffffu;
        uint32_t const rest = mantissa & 0x1fffu;  // the 13 bits that do not fit
        bits = static_cast<uint16_t>((((magnitude >> 23) - 112) << 10) | (mantissa >> 13));
        if (rest > 0x1000u || (rest == 0x1000u && (bits & 1u)))
            ++bits;  // a carry into the exponent is still the right value
    }
    return __half{static_cast<uint16_t>(sign | bits)};
}

#endif
