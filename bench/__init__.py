"""Benchmark commands (``python -m bench NAME``); `make bench` runs them all."""
