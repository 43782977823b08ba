"""What the server reports about itself: Prometheus metrics, the access log, GPU gauges."""
