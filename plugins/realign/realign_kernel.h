/* The C contract of the fused `scr.Realign` kernel (SCR_SPEC section 2).
 *
 * One header for three callers: the TensorRT plugin (RealignPlugin.cpp), shared
 * libraries built with nvcc (ctypes tests), and launch_plan.py, which parses the
 * `#define SCR_REALIGN_* <integer>` lines below so that the Python launch sequence
 * and the C launcher share one set of constants. Keep those lines in that plain form.
 *
 * T == 1 (decode): one launch, scr_realign_step_<x>, one block per batch row, no workspace.
 * Launch sequence for T != 1 (all on `stream`; see realign_kernel.cu and launch_plan.py):
 *   1. scr_realign_token_scalars_<x>  e[b,t], beta[b,t]          one warp per token
 *   2. scr_realign_chunk_totals_<x>   S[b,c,0..D]                per CHUNK tokens; column D sums e
 *   3. scr_realign_chunk_carries      S -> exclusive prefix      + num_in/den_in; num_out/den_out
 *   4. scr_realign_chunk_apply_<x>    m[b,t,:]                   block scan inside each chunk
 * Workspace (float32, each region starting at a multiple of SCR_REALIGN_WS_ALIGN bytes):
 *   e [B*T] | beta [B*T] | S [B, ceil(T/CHUNK), D+1]
 */
#ifndef SCR_REALIGN_KERNEL_H
#define SCR_REALIGN_KERNEL_H

#include <stddef.h>
#include <cuda_runtime_api.h>

#define SCR_REALIGN_CHUNK 128           /* tokens per chunk: the unit of the block-level scan */
#define SCR_REALIGN_DTILE 32            /* D columns per block (blockDim.x of the chunk kernels) */
#define SCR_REALIGN_ROWS 8              /* token rows per block (blockDim.y of the chunk kernels) */
#define SCR_REALIGN_TOKEN_WARPS 8       /* tokens per block in the token kernel, one warp each */
#define SCR_REALIGN_CARRY_PER_THREAD 4  /* chunks per thread per step of the carry scan */
#define SCR_REALIGN_STEP_THREADS 256    /* threads per batch row in the T == 1 kernel */
#define SCR_REALIGN_WS_ALIGN 256        /* byte alignment of every workspace region */
#define SCR_REALIGN_MAX_GRID_YZ 65535   /* CUDA limit on gridDim.y and gridDim.z */

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SCR_FLOAT32 = 0, SCR_FLOAT16 = 1 } scr_dtype_t;

/* Bytes of device workspace scr_realign_enqueue needs for these sizes (0 for T <= 1). */
size_t scr_realign_workspace_bytes(int B, int T, int D);

/* Launch the op on `stream`. h, m_prev and m are `dtype`; every other tensor is float32.
 * Shapes: h, m_prev, m [B,T,D]; num_in, num_out [B,D]; den_in, den_out [B,1]; w_r, w_g [D];
 * b_r, b_g [1]. `workspace` holds scr_realign_workspace_bytes(B, T, D) bytes, aligned to
 * SCR_REALIGN_WS_ALIGN. Returns a cudaError_t as int: cudaSuccess, cudaErrorInvalidValue for
 * bad arguments (nothing launched), or the launch error. T = 0 copies the carries through. */
int scr_realign_enqueue(scr_dtype_t dtype, const void* h, const void* m_prev,
    const float* num_in, const float* den_in, const float* w_r, const float* b_r,
    const float* w_g, const float* b_g, void* m, float* num_out, float* den_out,
    int B, int T, int D, float kappa, void* workspace, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SCR_REALIGN_KERNEL_H */
