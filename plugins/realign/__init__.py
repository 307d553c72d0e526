"""The fused `scr.Realign` kernel and its TensorRT plugins (SCR_SPEC section 2).

`realign_kernel.cu` holds the CUDA kernels and the C launcher, `launch_plan` the
same launch sequence as data (for launching the fatbin by name from Python),
`build_kernels` builds that fatbin, and `RealignPlugin.cpp` the C++ IPluginV3
library. Importing this package loads nothing heavy.
"""
