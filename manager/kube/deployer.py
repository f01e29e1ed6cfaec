"""Provider -> Deployment + Service in the cluster, and ``status.endpoint`` from them.

The Provider controller (``manager.controllers.provider``) health-checks whatever
serves ``status.endpoint``; in the cluster someone must run that server. This second
Provider reconciler applies what ``provider_resources`` (a pure function) builds for
a Provider with ``spec.runtime`` and records the Service address as
``status.endpoint``. A Provider without ``spec.runtime`` runs elsewhere: its operator
sets ``status.endpoint`` and this reconciler leaves it alone.

Applying is create-or-replace keyed on a hash of the wanted manifest (annotation
``virtrigaud.io/applied-hash``): the API server defaults many Deployment fields, so
comparing specs would rewrite the objects on every pass. A Service keeps its
``clusterIP`` (immutable) on replace. Deleting the Provider deletes both through their
owner references (the cluster's garbage collector). A Provider that cannot be run this
way (``replicas > 1``, a Secret in another namespace) gets ``Deployed=False`` with the
reason in its status and a Warning event.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from manager.kube.provider_resources import provider_address, provider_resources
from manager.kube.rest import KINDS, Rest
from manager.runtime.types import Result
from manager.store.base import Obj, ObjectKey, ObjectStore
from manager.store.objects import now_text
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.kube.deployer")

HASH_ANNOTATION = "virtrigaud.io/applied-hash"
DEPLOYED = "Deployed"


def _hash(manifest: Obj) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


class ProviderDeploymentReconciler:
    kind = "Provider"

    def __init__(
        self,
        store: ObjectStore,
        rest: Rest,
        *,
        image: str | None = None,
        allowed_storage_hosts: Sequence[str] = (),
        scratch_size_limit: str | None = None,
    ) -> None:
        self.store = store
        self.rest = rest
        self.image = image
        self.allowed_storage_hosts = tuple(allowed_storage_hosts)
        self.scratch_size_limit = scratch_size_limit

    def reconcile(self, key: ObjectKey) -> Result:
        try:
            obj = self.store.get(key.kind, key.namespace, key.name)
        except errors.NotFound:
            return Result()
        if obj["metadata"].get("deletionTimestamp"):
            return Result()
        try:
            wanted = provider_resources(
                obj,
                image=self.image,
                allowed_storage_hosts=self.allowed_storage_hosts,
                scratch_size_limit=self.scratch_size_limit,
            )
        except errors.ValidationError as exc:
            self._record(obj, None, ("InvalidRuntime", str(exc)), warn=True)
            return Result()
        if not wanted:
            return Result()  # runs elsewhere: its operator sets status.endpoint
        for manifest in wanted:
            self.apply(manifest)
        address = provider_address(obj)
        self._record(obj, address, ("Applied", f"Deployment and Service serve {address}"))
        return Result()

    def apply(self, manifest: Obj) -> Obj:
        """Create, or replace when the wanted manifest changed since the last apply."""
        kind = KINDS[manifest["kind"]]
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        what = f"{kind.kind} {namespace}/{name}"
        digest = _hash(manifest)
        desired: Obj = copy.deepcopy(manifest)
        desired["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
        try:
            current = self.rest.get(kind, namespace, name, what)
        except errors.NotFound:
            log.info("provider_resource_created", object=what)
            return self.rest.create(kind, namespace, desired, what)
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        if annotations.get(HASH_ANNOTATION) == digest:
            return current
        if kind.kind == "Service":
            spec: dict[str, Any] = current.get("spec") or {}
            for field in ("clusterIP", "clusterIPs"):
                if field in spec:
                    desired["spec"][field] = spec[field]
        desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        log.info("provider_resource_replaced", object=what)
        return self.rest.replace(kind, namespace, name, desired, what)

    def _record(
        self, obj: Obj, endpoint: str | None, reason: tuple[str, str], *, warn: bool = False
    ) -> None:
        status = dict(obj.get("status") or {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != DEPLOYED]
        old: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == DEPLOYED), {}
        )
        state = "True" if endpoint else "False"
        if (
            old.get("status") == state
            and old.get("reason") == reason[0]
            and (endpoint is None or status.get("endpoint") == endpoint)
        ):
            return
        condition = {
            "type": DEPLOYED,
            "status": state,
            "reason": reason[0],
            "message": reason[1],
            "lastTransitionTime": now_text(),
        }
        if endpoint:
            status["endpoint"] = endpoint
        status["conditions"] = [*conditions, condition]
        written = self.store.update_status({**obj, "status": status})  # Conflict: retried
        self.store.emit_event(written, "Warning" if warn else "Normal", reason[0], reason[1])
