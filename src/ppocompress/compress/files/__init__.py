"""File formats a compressed model is delivered in: safetensors + plan, ONNX, sentence-transformers folders."""
