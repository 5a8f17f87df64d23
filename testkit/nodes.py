"""Nodes on the Kubernetes API test server, made and reported on as a kubelet would (``kube_api`` is
the fixture's handle, ``testkit.kube_server.fixtures.KubeApi``)."""

from __future__ import annotations


def create_node(kube_api, name: str, ready: bool = False, gpus: int = 0) -> None:
    import kubernetes

    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(kube_api.kubeconfig)))
    api.create_node({"metadata": {"name": name}})
    set_node_status(kube_api, name, ready, gpus)


def set_node_status(kube_api, name: str, ready: bool, gpus: int) -> None:
    def change(node: dict) -> None:
        node["status"] = {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32"},
        }

    kube_api.server.mutate("nodes", name, change)
