"""The domain's rules: the lifecycle (states, transitions, the state sets), what a registration means
(GPUs per canonical model, the offer within the hardware), names and labels (GPU models, node names, the
labels and taint a node must carry), the approval policy, the join token's form and lifetime.

Pure, no I/O. May import ``worldland.protocol`` only.
"""
