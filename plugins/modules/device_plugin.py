"""Documentation of the ``worldland.provider.device_plugin`` action (it runs on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: device_plugin
author: WorldLand provider onboarding
version_added: "0.1.0"
short_description: Make sure NVIDIA's device plugin DaemonSet runs on the GPU provider nodes
description:
  - Runs on the controller (an action plugin), never on a provider host; talks to the Kubernetes API only.
  - With O(state=present), applies the DaemonSet C(kube-system/nvidia-device-plugin-daemonset) of NVIDIA's
    k8s-device-plugin at a pinned version (server-side apply, field manager C(worldland)). It has the shape of
    NVIDIA's static manifest (C(system-node-critical), a toleration for C(nvidia.com/gpu), the host's
    C(/var/lib/kubelet/device-plugins), all capabilities dropped, C(FAIL_ON_INIT_ERROR=false)), and runs
    only on nodes labelled C(worldland.io/rental-type=gpu), tolerating the C(worldland.io/offline) taint so
    that the plugin keeps serving while a provider is marked Offline. Labelled
    C(app.kubernetes.io/managed-by=worldland).
  - Reports C(changed) only when the object changed (created, or its labels, annotations, spec or the fields
    the C(worldland) manager owns differ); a second run with the same options reports no change.
  - With O(state=absent), deletes the DaemonSet (its pods go with it).
options:
  state:
    description: Whether the DaemonSet should exist.
    type: str
    choices: [present, absent]
    default: present
  version:
    description: NVIDIA's device plugin version (an image tag); also the C(app.kubernetes.io/version) label.
    type: str
    default: v0.17.0
  image:
    description: The image to run, for a mirror of NVIDIA's
      (default C(nvcr.io/nvidia/k8s-device-plugin:<version>)).
    type: str
  kubeconfig:
    description: Kubeconfig of the cluster (default C(WORLDLAND_KUBECONFIG)); it needs to read, apply and
      delete DaemonSets in C(kube-system).
    type: path
attributes:
  check_mode:
    support: full
    description: Says what would change without writing (a server-side dry run of the apply).
"""

EXAMPLES = r"""
- name: Apply the NVIDIA device plugin DaemonSet
  worldland.provider.device_plugin:
    state: present

- name: Run a newer device plugin from a local mirror
  worldland.provider.device_plugin:
    version: v0.17.1
    image: registry.example.internal/nvidia/k8s-device-plugin:v0.17.1

- name: Remove it
  worldland.provider.device_plugin:
    state: absent
"""

RETURN = r"""
name:
  description: The DaemonSet's name.
  type: str
  returned: always
  sample: nvidia-device-plugin-daemonset
namespace:
  description: Its namespace.
  type: str
  returned: always
  sample: kube-system
state:
  description: The state asked for.
  type: str
  returned: always
image:
  description: The image the DaemonSet runs (or would run, in check mode).
  type: str
  returned: when O(state=present)
  sample: nvcr.io/nvidia/k8s-device-plugin:v0.17.0
version:
  description: The device plugin version applied.
  type: str
  returned: when O(state=present)
previous_image:
  description: The device plugin image the DaemonSet had before; null when there was none.
  type: str
  returned: always
msg:
  description: What was done, or in check mode what would be.
  type: str
  returned: always
"""
