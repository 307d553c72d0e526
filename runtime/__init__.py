"""scredge.runtime: torch-free inference over artifact folders.

Imports numpy (and, where used, onnxruntime or tensorrt) only; never torch.
The runners and the application API land with the runtime issue; the shared
sampler already lives in `scredge.sampling` and is re-exported here.
"""

from scredge.sampling import GREEDY, Sampler, SamplingParams

__all__ = ["GREEDY", "Sampler", "SamplingParams"]
