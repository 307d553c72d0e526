"""Backends behind one interface: onnxruntime now, TensorRT with its issue."""
