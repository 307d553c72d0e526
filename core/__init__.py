"""scredge: SCR language models from PyTorch to ONNX Runtime and TensorRT.

Subpackages: `scredge.ref` (reference model, torch), `scredge.export`
(PyTorch -> ONNX), `scredge.plugins` (TensorRT plugin), `scredge.runtime`
(torch-free inference). This top level stays dependency-light: numpy only.
"""

from scredge.config import PRESETS, SCRConfig
from scredge.errors import ScredgeError

__version__ = "0.1.0"

__all__ = ["PRESETS", "SCRConfig", "ScredgeError", "__version__"]
