"""Pure renders: a ModelDeployment's spec -> the plain dicts of its children.

No API calls here. Every function is a function of an :class:`~.ownership.Owner` and a typed
:class:`~model_poller_api.models.ModelDeploymentSpec`, so the output is golden-file tested
(``tests/operator/test_render.py``) and the edge (``apply.py``) only compares and applies.

The version policy (``spec.versions``) is not rendered: the poller reads it from its
ModelDeployment at run time, so a policy change (a rollback) never touches the pod
template and never restarts pods. ``spec.storage.sizeLimit`` reaches the poller as
``--storage-limit``, from which it bounds each version under the live policy.

The modules, one per thing rendered: ``ownership`` (the owner, its children's names, labels,
selectors and ownerReferences), ``pod_containers`` (the poller and TF Serving containers),
``deployment`` (the pod's volumes, the pod template, the Deployment), ``rbac`` (the poller's
ServiceAccount, Role and RoleBinding), ``service`` (the Service), ``monitoring`` (TF Serving's
monitoring config: a pod-template annotation and its downwardAPI volume), ``budget`` (the PodDisruptionBudget) and ``spec_paths`` (the spec
field behind a rendered field, for the API server's refusals).
"""

from typing import Any

Obj = dict[str, Any]
