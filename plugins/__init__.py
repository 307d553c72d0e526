"""scredge.plugins: the TensorRT `Realign` plugin (SCR_SPEC section 2).

Not yet implemented: the kernel and plugin land with the plugin issue.
"""
