"""scredge.export: PyTorch -> ONNX export of SCR models (SCR_SPEC sections 2-4).

Not yet implemented: the exporter lands with the export issue. Until then
this package only reserves the import name.
"""
