// Runs the real realign_kernel.cu on a CPU, so CI without a GPU still checks the kernels'
// own indexing, shared-memory scans and carries against the float64 oracle
// (tests/plugins/test_kernel_emulated.py).
//
// Each CUDA thread of a block is a fiber (ucontext) on one OS thread. A fiber runs until
// it reaches a barrier (__syncthreads, or the exchange points of a warp shuffle) and
// yields; the scheduler releases a barrier once every thread it covers has arrived. The
// grid is walked block by block, so a `__shared__` (a `static` here) is the block's own.
// Not emulated: memory-model races between threads that a barrier does not order.
//
// Build: g++ -std=c++17 -shared -fPIC -I<this dir> -I<plugins/realign> emulator.cpp
#include <algorithm>
#include <cstring>
#include <ucontext.h>
#include <utility>
#include <vector>

#include "realign_kernel.cu"

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace
{

using Trampoline = void (*)(void** args);

enum class State
{
    Ready,
    AtBlockBarrier,
    AtWarpBarrier,
    Done
};

struct Fiber
{
    ucontext_t context;
    std::vector<char> stack;
    State state = State::Ready;
    dim3 thread;
    dim3 block;  // the block this fiber is running now
};

struct Launch
{
    Trampoline kernel;
    void** args;
    dim3 grid;
    dim3 block;
    std::vector<Fiber> fibers;
    std::vector<unsigned> warpArrived;
    std::vector<float> lanes;  // shuffle exchange slots, one per thread
    unsigned blockArrived = 0;
    unsigned current = 0;
    ucontext_t scheduler = {};
};

thread_local Launch* tLaunch = nullptr;

void yield(State state)
{
    Fiber& f = tLaunch->fibers[tLaunch->current];
    f.state = state;
    swapcontext(&f.context, &tLaunch->scheduler);
}

void fiber_main()
{
    Launch& l = *tLaunch;
    Fiber& self = l.fibers[l.current];
    for (unsigned z = 0; z < l.grid.z; ++z)
        for (unsigned y = 0; y < l.grid.y; ++y)
            for (unsigned x = 0; x < l.grid.x; ++x)
            {
                self.block = dim3(x, y, z);
                blockIdx = self.block;
                l.kernel(l.args);
                __syncthreads();  // the next block reuses the shared memory
            }
    self.state = State::Done;
    swapcontext(&self.context, &l.scheduler);
}

unsigned warp_size(Launch const& l, unsigned warp)
{
    unsigned const threads = static_cast<unsigned>(l.fibers.size());
    return std::min(32u, threads - 32 * warp);
}

cudaError_t run(Trampoline kernel, dim3 grid, dim3 block, void** args)
{
    unsigned const threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0
        || grid.y > 65535 || grid.z > 65535)
        return cudaErrorInvalidValue;  // what CUDA answers for such a configuration
    Launch l{kernel, args, grid, block, std::vector<Fiber>(threads),
        std::vector<unsigned>((threads + 31) / 32, 0), std::vector<float>(threads, 0.f)};
    tLaunch = &l;
    blockDim = block;
    gridDim = grid;
    for (unsigned tid = 0; tid < threads; ++tid)
    {
        Fiber& f = l.fibers[tid];
        f.thread = dim3(tid % block.x, tid / block.x % block.y, tid / (block.x * block.y));
        f.stack.resize(256 * 1024);
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = nullptr;
        makecontext(&f.context, fiber_main, 0);
    }
    unsigned done = 0;
    while (done < threads)
    {
        bool moved = false;
        for (unsigned tid = 0; tid < threads; ++tid)
        {
            Fiber& f = l.fibers[tid];
            if (f.state != State::Ready)
                continue;
            l.current = tid;
            threadIdx = f.thread;
            blockIdx = f.block;
            swapcontext(&l.scheduler, &f.context);
            moved = true;
            done += f.state == State::Done;
        }
        for (unsigned w = 0; w < l.warpArrived.size(); ++w)
            if (l.warpArrived[w] == warp_size(l, w))
            {
                l.warpArrived[w] = 0;
                for (unsigned t = 32 * w; t < 32 * w + warp_size(l, w); ++t)
                    l.fibers[t].state = State::Ready;
                moved = true;
            }
        if (l.blockArrived == threads)
        {
            l.blockArrived = 0;
            for (Fiber& f : l.fibers)
                f.state = State::Ready;
            moved = true;
        }
        if (!moved && done < threads)
        {
            tLaunch = nullptr;
            return cudaErrorLaunchFailure;  // a barrier that not every thread reaches
        }
    }
    tLaunch = nullptr;
    return cudaSuccess;
}

template <typename... P, size_t... I>
void invoke(void (*kernel)(P...), void** args, std::index_sequence<I...>)
{
    kernel(*static_cast<P*>(args[I])...);  // args[i] points at the i-th parameter's value
}

template <typename... P>
constexpr size_t arity(void (*)(P...))
{
    return sizeof...(P);
}

template <auto Kernel>
void run_kernel(void** args)
{
    invoke(Kernel, args, std::make_index_sequence<arity(Kernel)>{});
}

struct Entry
{
    char const* name;
    void const* symbol;
    Trampoline run;
};

#define SCR_KERNEL(k) Entry{#k, reinterpret_cast<void const*>(&k), &run_kernel<&k>}
Entry const kKernels[] = {
    SCR_KERNEL(scr_realign_step_f32),
    SCR_KERNEL(scr_realign_step_f16),
    SCR_KERNEL(scr_realign_token_scalars_f32),
    SCR_KERNEL(scr_realign_token_scalars_f16),
    SCR_KERNEL(scr_realign_chunk_totals_f32),
    SCR_KERNEL(scr_realign_chunk_totals_f16),
    SCR_KERNEL(scr_realign_chunk_carries),
    SCR_KERNEL(scr_realign_chunk_apply_f32),
    SCR_KERNEL(scr_realign_chunk_apply_f16),
};
#undef SCR_KERNEL

} // namespace

void __syncthreads()
{
    ++tLaunch->blockArrived;
    yield(State::AtBlockBarrier);
}

float __shfl_xor_sync(unsigned /*mask*/, float value, int laneMask)
{
    Launch& l = *tLaunch;
    unsigned const tid = l.current;  // read before yielding: `current` moves on meanwhile
    unsigned const lane = tid % 32;
    l.lanes[tid] = value;
    ++l.warpArrived[tid / 32];
    yield(State::AtWarpBarrier);
    float const other = l.lanes[tid - lane + (lane ^ static_cast<unsigned>(laneMask))];
    ++l.warpArrived[tid / 32];
    yield(State::AtWarpBarrier);  // nobody overwrites a slot before every lane has read
    return other;
}

cudaError_t cudaLaunchKernel(
    void const* func, dim3 grid, dim3 block, void** args, size_t /*sharedMem*/, cudaStream_t /*stream*/)
{
    for (Entry const& k : kKernels)
        if (k.symbol == func)
            return run(k.run, grid, block, args);
    return cudaErrorInvalidValue;
}

// Launch by name with an argument array, as cuLaunchKernel does for the Python plugin.
extern "C" int emu_launch(char const* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
    unsigned by, unsigned bz, void** args)
{
    for (Entry const& k : kKernels)
        if (std::strcmp(k.name, name) == 0)
            return static_cast<int>(run(k.run, dim3(gx, gy, gz), dim3(bx, by, bz), args));
    return -1;  // no such kernel
}
