"""Redis: the key layout, the connection (Sentinel too), providers, heartbeats, the capacity ledger, the
streams, and the ``Fleet`` facade over them. Every write that reads a state first is one Lua script.

May import ``worldland.protocol`` and ``worldland.domain``.
"""
