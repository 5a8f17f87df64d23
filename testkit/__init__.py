"""What the tests and the benchmarks share: a private redis-server, the Kubernetes API test server,
factories of valid wire messages, a fake clock, and helpers that put providers, nodes, the listener and
a stand-in Go agent in a known state.

``tests/`` and ``bench/`` import from here; a test module never imports another test module, and
``bench/`` never imports ``tests/``. This package is never installed (``pip install worldland`` ships
``worldland*`` only) and ``worldland/`` never imports it.
"""
