"""Observability: Prometheus metrics (process counters and store-read queue gauges, labels
from closed sets only) and structured JSON logs with a scrubber for phone and e-mail shapes."""
