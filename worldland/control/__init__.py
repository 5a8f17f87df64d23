"""The control plane: onboarding (registration, approval, join tokens, answers, reconcile), the listener
and its metrics, the heartbeat audit, the one writer of node labels and taints, the inventory's view.

May import everything below it (``protocol``, ``domain``, ``state``, ``kube``); never ``cli``.
"""
