"""scredge.plugins: TensorRT support for the `scr.Realign` op (SCR_SPEC section 2).

- `realign/`: the CUDA kernel (`realign_kernel.cu`, C launcher in `realign_kernel.h`), its
  launch plan for Python (`launch_plan.py`), the nvcc fatbin build (`build_kernels.py`),
  the Python IPluginV3 plugin (`python_plugin.py`) and the C++ IPluginV3 library
  (`RealignPlugin.cpp`, `CMakeLists.txt`); see its README for the I/O contract.
- `trt.py`: one import for `tensorrt` (10.x) or `tensorrt_rtx`.
- `onnx_modes.py`: the graph handed to the parser in plugin or decomposed mode.

Nothing here imports tensorrt, cuda or torch at import time.
"""
