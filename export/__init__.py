"""The torch-free edge runtime (onnxruntime + numpy + pillow). Copied into every bundle as ``export/``."""
