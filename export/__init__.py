"""scredge.export: PyTorch -> ONNX export of SCR models (SCR_SPEC sections 2-4).

`export_artifact(model, out, dtype=..., opset=...)` writes a verified artifact folder;
`export_graph(model)` returns the bare ONNX graph; `sources` builds the model to export
(preset, checkpoint, or a local Hugging Face Llama folder). Needs the `export` extra.
"""
