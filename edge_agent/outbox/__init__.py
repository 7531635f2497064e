"""The durable local outbox: every message the agent publishes is committed here first."""
