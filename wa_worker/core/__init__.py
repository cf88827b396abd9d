"""The core the flow runs on: the I/O loop, dedupe stores, handlers, breaker, backlog, drain,
offsets, metrics and Kafka helpers. Imports only the core (ARCHITECTURE.md)."""
