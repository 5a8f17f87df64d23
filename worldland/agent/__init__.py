"""The provider side (the seed's "Provider SDK"): discovery, registration, the heartbeat loop, the safe
join. Filled by the agent issue.

May import ``worldland.protocol`` and ``worldland.domain`` only, never ``state``, ``kube`` or ``control``:
``pip install worldland`` (no extras) is what a provider machine needs.
"""
