"""`edge-agent models quantize`: float model in, int8 model out, with its agreement and
speed measured against the float one. Needs the `quantize` extra (ai-edge-quantizer);
the agent itself never imports this package."""
