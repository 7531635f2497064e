"""YOLO heads (placeholder until the decoder lands)."""
