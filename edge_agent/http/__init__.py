"""The local HTTP endpoint: Prometheus metrics, the status as JSON, the latest snapshot and
a small live page. Off by default; the agent imports it only when [http] enables it, so a
device without it pays nothing for it."""
