"""A Provider -> the Deployment and Service that run its gRPC server in the cluster.

Pure functions, no I/O: the Provider controller (Kubernetes mode) applies what
``provider_resources`` returns and records ``provider_address`` as the Provider's
``status.endpoint``. A Provider without ``spec.runtime`` runs elsewhere (its operator
sets ``status.endpoint``), so it gets no objects.

Why the Deployment looks the way it does:

* One replica at most. A provider keeps its tasks (ExportDisk, ImportDisk ...) in the
  memory of the process that started them, and ``GetTask`` must reach that process. A
  Service spreads connections over replicas, so a second replica would answer
  ``NotFound`` for tasks it never started; ``replicas > 1`` is refused until a task
  carries the address of the pod that owns it (see docs/kubernetes-deploy.md).
  ``replicas: 0`` (stopped) is allowed. For the same reason the rollout strategy is
  ``Recreate``: the old pod finishes or cancels its tasks (``--grace``) before a new one
  starts, instead of two pods serving one Service.
* The process runs as a non-root user on a read-only root filesystem. Disk conversions
  need local space, so ``scratchDir`` (an option of every provider) points at an
  ``emptyDir``, and ``/tmp`` is a second ``emptyDir`` (private key files, temp files).
* Secrets are mounted read-only, one file per key, which is what ``--credentials-dir``
  reads. A pod can only mount Secrets of its own namespace, so a reference to a Secret
  in another namespace is refused with a clear error.
* Health: the provider serves the standard gRPC health service, so the probes are
  Kubernetes' native ``grpc`` probes. The kubelet's gRPC probe speaks plaintext only;
  with TLS enabled (``spec.runtime.tlsSecretRef``) the probes fall back to a TCP
  connect check.
* Owner references point at the Provider (``controller: true``), so deleting the
  Provider deletes its Deployment and Service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from manager.api import Provider
from manager.api.meta import ObjectReference
from manager.api.provider import ResourceRequirements
from manager.onemachine.launcher import ALLOWED_HOSTS_ENV, provider_options
from virtrigaud.errors import ValidationError

Obj = dict[str, Any]

SERVICE_NAME = "virtrigaud.provider.v1.Provider"  # the gRPC service readiness asks about
CONTAINER = "provider"
CREDENTIALS_DIR = "/etc/virtrigaud/credentials"
TLS_DIR = "/etc/virtrigaud/tls"
SCRATCH_DIR = "/var/lib/virtrigaud/scratch"
TMP_DIR = "/tmp"  # noqa: S108 - an emptyDir of the pod, not the host's /tmp
RUN_AS = 65532  # the image's user (Dockerfile.provider)
GRACE_SECONDS = 30  # --grace: tasks get this long after SIGTERM
TERMINATION_GRACE_SECONDS = GRACE_SECONDS + 15
MAX_NAME = 63  # a Service name is a DNS-1035 label
SECRET_MODE = 0o440  # owner and group (fsGroup) may read

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TYPE = "virtrigaud.io/provider-type"
APP_NAME = "virtrigaud-provider"
MANAGED_BY = "virtrigaud-manager"

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


def resource_name(provider_name: str) -> str:
    """Name of the Deployment and Service of a Provider: ``provider-<name>``.

    A Provider name is a DNS subdomain (dots, up to 253 characters); a Service name
    must be a DNS-1035 label (no dots, at most 63, starting with a letter). Dots become
    dashes, and a name that is still too long is cut and given a hash of the full name
    so that two long names never collide.
    """
    base = "provider-" + provider_name.replace(".", "-")
    if len(base) <= MAX_NAME:
        return base
    digest = hashlib.sha256(provider_name.encode()).hexdigest()[:8]
    return base[: MAX_NAME - len(digest) - 1].rstrip("-") + "-" + digest


def selector_labels(provider_name: str) -> dict[str, str]:
    """The labels that select a Provider's pods (never change: selectors are immutable)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: _label_value(provider_name)}


def provider_address(provider_obj: Mapping[str, Any]) -> str:
    """``host:port`` at which the manager reaches the provider through its Service."""
    provider = Provider.from_dict(provider_obj)
    runtime = provider.spec.runtime
    if runtime is None:
        raise ValidationError("spec.runtime", "the provider runs elsewhere: no Service address")
    namespace = _namespace(provider)
    return f"{resource_name(provider.metadata.name)}.{namespace}.svc:{runtime.port}"


def provider_resources(
    provider_obj: Mapping[str, Any],
    *,
    image: str | None = None,
    allowed_storage_hosts: Sequence[str] = (),
    scratch_size_limit: str | None = None,
    image_pull_policy: str = "IfNotPresent",
) -> list[Obj]:
    """The Deployment and Service that run ``provider_obj`` (``[]`` without spec.runtime).

    ``image`` replaces ``spec.runtime.image`` when given (a manager pinned to one
    provider image); ``allowed_storage_hosts`` are the manager-wide storage hosts,
    merged before the Provider's own ``spec.allowedStorageHosts``; ``scratch_size_limit``
    bounds the scratch ``emptyDir`` (a Kubernetes quantity, e.g. ``50Gi``).
    Raises ValidationError for a Provider that cannot be run this way.
    """
    provider = Provider.from_dict(provider_obj)
    runtime = provider.spec.runtime
    if runtime is None:
        return []
    if runtime.replicas > 1:
        raise ValidationError(
            "spec.runtime.replicas",
            f"{runtime.replicas} replicas: a provider's tasks live in the process that "
            "started them, so at most 1 replica is supported",
        )
    if provider.metadata.uid is None:
        raise ValidationError("metadata.uid", "the Provider must exist (have a uid) first")
    namespace = _namespace(provider)
    name = resource_name(provider.metadata.name)
    labels = {
        **selector_labels(provider.metadata.name),
        LABEL_COMPONENT: "provider",
        LABEL_PART_OF: "virtrigaud",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TYPE: provider.spec.type.value,
    }
    meta = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [_owner(provider)],
    }
    pod = _pod_spec(
        provider,
        namespace,
        image=image or runtime.image,
        allowed=allowed_storage_hosts,
        scratch_size_limit=scratch_size_limit,
        image_pull_policy=image_pull_policy,
    )
    deployment: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": runtime.replicas,
            "selector": {"matchLabels": selector_labels(provider.metadata.name)},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }
    service: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**meta, "labels": dict(labels), "ownerReferences": [_owner(provider)]},
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(provider.metadata.name),
            "ports": [
                {
                    "name": "grpc",
                    "port": runtime.port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                }
            ],
        },
    }
    return [deployment, service]


def _namespace(provider: Provider) -> str:
    return provider.metadata.namespace or "default"


def _label_value(value: str) -> str:
    """A label value is at most 63 characters (a Provider name may be longer)."""
    if len(value) <= MAX_NAME:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return value[: MAX_NAME - len(digest) - 1].rstrip("-.") + "-" + digest


def _owner(provider: Provider) -> Obj:
    return {
        "apiVersion": provider.API_VERSION,
        "kind": provider.KIND,
        "name": provider.metadata.name,
        "uid": provider.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _local_secret(ref: ObjectReference, namespace: str, field: str) -> str:
    if ref.namespace_or(namespace) != namespace:
        raise ValidationError(
            field,
            f"Secret {ref.namespace}/{ref.name} is in another namespace than the Provider "
            f"({namespace}); a pod can only mount Secrets of its own namespace",
        )
    return ref.name


def _secret_volume(name: str, secret: str) -> Obj:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": SECRET_MODE}}


def _args(provider: Provider, port: int, *, credentials: bool, tls: bool) -> list[str]:
    args = ["provider", "--type", provider.spec.type.value, "--endpoint", provider.spec.endpoint]
    args += ["--listen", f"0.0.0.0:{port}", "--grace", str(GRACE_SECONDS)]
    if credentials:
        args += ["--credentials-dir", CREDENTIALS_DIR]
    if tls:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
        args += ["--tls-ca", f"{TLS_DIR}/ca.crt"]
    # scratchDir is always the pod's emptyDir: nothing else is writable in the container.
    options = {**provider_options(provider), "scratchDir": SCRATCH_DIR}
    for key, value in sorted(options.items()):
        args += ["--option", f"{key}={value}"]
    return args


def _probes(port: int, tls: bool) -> dict[str, Obj]:
    if tls:  # the kubelet's gRPC probe cannot do TLS
        ready: Obj = {"tcpSocket": {"port": port}}
        live: Obj = {"tcpSocket": {"port": port}}
    else:
        ready = {"grpc": {"port": port, "service": SERVICE_NAME}}
        live = {"grpc": {"port": port}}
    return {
        "startupProbe": {**live, "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {**ready, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**live, "periodSeconds": 20, "failureThreshold": 3, "timeoutSeconds": 5},
    }


def _pod_spec(
    provider: Provider,
    namespace: str,
    *,
    image: str,
    allowed: Sequence[str],
    scratch_size_limit: str | None,
    image_pull_policy: str,
) -> Obj:
    runtime = provider.spec.runtime
    assert runtime is not None
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    cred_ref = provider.spec.credentials_secret_ref
    if cred_ref is not None:
        secret = _local_secret(cred_ref, namespace, "spec.credentialsSecretRef.namespace")
        volumes.append(_secret_volume("credentials", secret))
        mounts.append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
    tls_ref = runtime.tls_secret_ref
    if tls_ref is not None:
        secret = _local_secret(tls_ref, namespace, "spec.runtime.tlsSecretRef.namespace")
        volumes.append(_secret_volume("tls", secret))
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    scratch: Obj = {"sizeLimit": scratch_size_limit} if scratch_size_limit else {}
    volumes += [{"name": "scratch", "emptyDir": scratch}, {"name": "tmp", "emptyDir": {}}]
    mounts += [
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    hosts = [h for h in allowed if h.strip()]
    hosts += [h for h in provider.spec.allowed_storage_hosts if h not in hosts]
    env: list[Obj] = [{"name": "TMPDIR", "value": TMP_DIR}]
    if hosts:
        env.append({"name": ALLOWED_HOSTS_ENV, "value": ",".join(hosts)})
    resources = _resources(runtime.resources)
    container: Obj = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["virtrigaud"],
        "args": _args(
            provider, runtime.port, credentials=cred_ref is not None, tls=tls_ref is not None
        ),
        "env": env,
        "ports": [{"name": "grpc", "containerPort": runtime.port, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        **_probes(runtime.port, tls_ref is not None),
    }
    return {
        "automountServiceAccountToken": False,  # the provider never calls the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }


def _resources(requirements: ResourceRequirements | None) -> Obj:
    if requirements is None or not (requirements.limits or requirements.requests):
        return {part: dict(values) for part, values in DEFAULT_RESOURCES.items()}
    out: Obj = {}
    for part in ("requests", "limits"):
        values = getattr(requirements, part)
        if values:
            out[part] = {key: str(value) for key, value in values.items()}
    return out
