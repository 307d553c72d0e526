// Host stand-in for the CUDA runtime API, for running realign_kernel.cu on a CPU in tests.
// Only what realign_kernel.cu uses; the launch goes to the SIMT emulator in emulator.cpp.
#ifndef SCR_HOST_CUDA_RUNTIME_API_H
#define SCR_HOST_CUDA_RUNTIME_API_H

#include <stddef.h>

#ifdef __cplusplus
struct dim3
{
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
#endif

typedef void* cudaStream_t;
typedef enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 } cudaError_t;

#ifdef __cplusplus
cudaError_t cudaLaunchKernel(
    const void* func, dim3 grid, dim3 block, void** args, size_t sharedMem, cudaStream_t stream);
#endif

#endif
