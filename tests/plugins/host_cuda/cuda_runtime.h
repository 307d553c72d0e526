// Host stand-in for cuda_runtime.h: CUDA keywords become plain C++, and the built-in
// thread coordinates become thread-local variables that the SIMT emulator sets.
#ifndef SCR_HOST_CUDA_RUNTIME_H
#define SCR_HOST_CUDA_RUNTIME_H

#include "cuda_runtime_api.h"

#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time, so a static is that block's shared memory

extern thread_local dim3 threadIdx;
extern thread_local dim3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

void __syncthreads();
float __shfl_xor_sync(unsigned mask, float value, int laneMask);

#endif
