"""Metrics, traces, structured logs and event-loop lag: what an operator sees of the gateway."""
