"""Pretrained models: reading their published weights, converting them to ONNX, running them."""
