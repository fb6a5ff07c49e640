"""Delivery: device registry, templates and PII tokens, the planner, envelopes, providers."""
