"""Inference runtime: interpreter package, delegates, quantization, pre- and post-processing."""
