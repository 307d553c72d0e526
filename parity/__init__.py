"""Parity: does a backend compute what the reference computes? SCR_SPEC section 5's tiers.

Golden files (the reference's outputs, recorded where torch is) and the tier runners that
compare a backend with them anywhere, torch-free: onnxruntime (every tier, with graph
surgery for the layer and op tiers) and any runner (logits, teacher-forced, greedy; the op
tier through the TensorRT plugin alone).
"""
