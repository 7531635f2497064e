"""Hybrid inference: results the device is unsure of go to a bigger model elsewhere
(docs/escalation.md). policy.py decides which, within a budget; client.py sends them through
the outbox and turns answers into refined results; server.py is the reference server.
Imported only when a pipeline has escalation on (or by `edge-fleet serve-escalation`)."""
