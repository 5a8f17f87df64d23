"""Stand-in commands for the lab's provider hosts (nvidia-smi, kubeadm, systemctl).

Each is a script run through a per-host wrapper in the host's ``/usr/local/sbin``; the wrapper sets
``WORLDLAND_LAB_HOST_CONFIG`` to the host's JSON config. They live under ``tests/`` only: roles and
playbooks never know about them.
"""
