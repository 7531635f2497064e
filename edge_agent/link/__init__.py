"""The MQTT link: a connection that survives anything, and the sender that drains the
outbox through it."""
