"""The two pieces every TensorRT call is made of: an execution context that remembers what
it was last given, and a stream with the device buffers allocated for one call or decoder.

All CUDA calls go through one `CudaOps`-like object (injected; tests use a fake).
"""

from __future__ import annotations

from collections.abc import Mapping

from scredge.errors import ScredgeError


class Context:
    """One TensorRT execution context and the profile and input shapes last set on it, so
    a call re-sends only what changed. Not thread-safe (nor is TensorRT's): each belongs to
    one decoder or one stateless call."""

    def __init__(self, trt_context, stream: int) -> None:
        if trt_context is None:
            raise ScredgeError("TensorRT could not create an execution context",
                               received="create_execution_context() returned None",
                               expected="an execution context (it needs free GPU memory for "
                                        "the engine's activations)",
                               fix="check free GPU memory; see the TensorRT messages above")
        self.trt, self.stream = trt_context, stream
        self.profile: int | None = None
        self._shapes_set: Mapping[str, tuple] | None = None  # last shapes given to it

    @classmethod
    def create(cls, engine, runtime_config, stream: int) -> Context:
        """A new execution context of `engine` (TensorRT for RTX: with its runtime config,
        which carries its own CUDA-graph capture) running on `stream`."""
        if runtime_config is not None:
            return cls(engine.create_execution_context(runtime_config), stream)
        return cls(engine.create_execution_context(), stream)

    def run(self, profile: int, input_shapes: Mapping[str, tuple], addresses: Mapping[str, int]
            ) -> None:
        ctx = self.trt
        if profile != self.profile:
            if not ctx.set_optimization_profile_async(profile, self.stream):
                raise ScredgeError("TensorRT refused the optimisation profile",
                                   received=profile, expected="0 (prefill) or 1 (decode)",
                                   fix="rebuild the engine with `scredge build`")
            self.profile = profile
            self._shapes_set = None  # a profile switch needs the shapes set again
        if input_shapes is not self._shapes_set:  # same dict object: the context has them
            for name, shape in input_shapes.items():
                if not ctx.set_input_shape(name, shape):
                    raise ScredgeError(f"TensorRT refused the shape of input '{name}'",
                                       received=list(shape),
                                       expected=f"profile {profile}'s range")
            self._shapes_set = input_shapes
        for name, ptr in addresses.items():
            if not ctx.set_tensor_address(name, ptr):
                raise ScredgeError(f"TensorRT refused the address of tensor '{name}'",
                                   received=hex(ptr), expected="a tensor of this engine, "
                                   "256-byte aligned (cudaMalloc's alignment)",
                                   fix="rebuild the engine from this artifact with "
                                       "`scredge build`")
        if not ctx.execute_async_v3(self.stream):
            raise ScredgeError("TensorRT execution failed", received="execute_async_v3 False",
                               expected="True", fix="see the TensorRT messages above")


class DeviceBuffers:
    """A CUDA stream and the device buffers allocated on it, freed together."""

    def __init__(self, cuda) -> None:
        self.cuda = cuda
        self.stream: int | None = cuda.stream()
        self._ptrs: list[int] = []

    def alloc(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._ptrs.append(ptr)
        return ptr

    def close(self) -> None:
        for ptr in self._ptrs:
            self.cuda.free(ptr)
        self._ptrs.clear()
        if self.stream is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None
