"""edge-agent: run quantized TFLite models on edge devices and sync results over MQTT."""

__version__ = "0.1.0"
