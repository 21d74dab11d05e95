"""Measuring a model: quality against the dense one, parameters, bytes, FLOPs and latency."""
