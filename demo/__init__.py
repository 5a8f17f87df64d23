"""``make demo``: the whole WorldLand flow on one machine, as a newcomer meets it, then torn down.

1. ``lab``: a private Redis, the real Kubernetes control plane of ``../shared/kube`` (where that is absent,
   the project's Kubernetes API test server, and the output says so), N provider hosts (network and mount
   namespaces with their own sshd, tests/lab/) with the lab's signed apt repository, and a real Prometheus
   (Debian's package) that scrapes the listener;
2. ``agents``: ``playbooks/install_agent.yml`` installs ``worldland-provider`` on every host; each agent finds
   its (stand-in) GPUs with nvidia-smi and registers;
3. ``approval``: ``worldland listen`` validates the registrations and approves them by the demo's policy
   (printed), creating a short-lived bootstrap token for each;
4. ``onboarding``: ``worldland onboard`` (ansible-runner, ``playbooks/onboard.yml``): driver, container
   runtime, kubelet/kubeadm, ``kubeadm join`` (real with ``../shared/kube``; with the test server the lab's
   kubeadm stand-in registers the Node), labels; providers go Approved -> Joined -> Available;
5. ``ledger``: mining takes idle GPUs, a rental takes one back from mining, an oversized rental is refused,
   the rental is released;
6. ``audit``: one agent stopped, ``worldland audit`` (every few seconds, as cron would) marks it Offline and
   taints its node, Prometheus fires the offline alert, the agent starts again and the provider recovers;
7. ``summary``: ``worldland status``, each node's labels and taints from the API; then the time per phase.

Run as root: ``make demo`` (``HOSTS=N``, 1 to 20) or ``.venv/bin/python -m demo --hosts N``. Output is a
rich progress display on a terminal and plain lines otherwise; tokens are never printed. Any failure names
its phase and exits 1; Ctrl-C (or SIGTERM) exits 130; either way everything is torn down first.
"""
