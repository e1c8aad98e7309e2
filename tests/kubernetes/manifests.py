"""Read deploy/kubernetes the way `kubectl apply -k` does, without a cluster or kubectl.

``render`` builds a kustomization from the features deploy/kubernetes uses: ``resources``
(files and other kustomization folders), ``namespace``, ``images`` and ``patches`` (strategic
merge patch files: maps merged key by key, lists of named items by ``name`` or, for volume
mounts, ``mountPath``). A kustomization that uses
any other feature is refused, so that this reader never silently differs from kustomize; where
kubectl is installed, tests/kubernetes/test_manifests.py also compares the two outputs.

``PodSpec`` is one pod of a workload as the kubelet would run it: its containers' environment
with ``$(VAR)`` references, ``fieldRef`` pod names and ConfigMap keys resolved.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KNOWN_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
_MERGE_KEYS = ("name", "mountPath")
# Kinds that live outside namespaces: kustomize leaves their metadata.namespace unset.
CLUSTER_SCOPED = {"Namespace"}
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]


class ManifestError(ValueError):
    """deploy/kubernetes says something this reader (or Kubernetes) does not accept."""


def render(folder: Path) -> list[Doc]:
    """The resources of the kustomization in ``folder``, as `kubectl kustomize` prints them."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise ManifestError(
            f"{folder}/kustomization.yaml uses {sorted(unknown)}: teach "
            "tests/kubernetes/manifests.py these kustomize features before using them"
        )
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((folder / entry["path"]).read_text())
        _merge(find(docs, patch["kind"], patch["metadata"]["name"]), patch)
    namespace = kustomization.get("namespace")
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc.setdefault("metadata", {})["namespace"] = namespace
        for container in containers(doc):
            container["image"] = _new_image(container["image"], kustomization.get("images", []))
    return docs


def _merge(into: Any, patch: Any) -> Any:
    """``patch`` merged into ``into`` as a strategic merge patch does (in place)."""
    if isinstance(into, dict) and isinstance(patch, dict):
        for key, value in patch.items():
            into[key] = _merge(into[key], value) if key in into else value
        return into
    key = _list_key(into, patch)
    if key is None:
        return patch
    named = {item[key]: item for item in into}
    for item in patch:
        if item[key] in named:
            _merge(named[item[key]], item)
    # Items the list did not have go first, in the patch's order (as kustomize puts them).
    into[:0] = [item for item in patch if item[key] not in named]
    return into


def _list_key(into: Any, patch: Any) -> str | None:
    """The key lists of named items are merged by (None: the patch replaces the list)."""
    if not (isinstance(into, list) and isinstance(patch, list)):
        return None
    items = [*into, *patch]
    if not all(isinstance(i, dict) for i in items):
        return None
    return next((k for k in _MERGE_KEYS if all(k in i for i in items)), None)


def _new_image(image: str, rules: list[dict[str, str]]) -> str:
    name, _, tag = image.partition(":")
    for rule in rules:
        if rule["name"] == name:
            return f"{rule.get('newName', name)}:{rule.get('newTag', tag or 'latest')}"
    return image


def pod_template(doc: Doc) -> Doc | None:
    """The pod template of a workload (Deployment, StatefulSet, ...), None for other kinds."""
    template = doc.get("spec", {}).get("template")
    return template if isinstance(template, dict) else None


def pod_spec(workload: Doc) -> Doc:
    """The pod spec of a workload's template; ManifestError for a document that has none."""
    template = pod_template(workload)
    if template is None:
        raise ManifestError(f"{workload['kind']} {workload['metadata']['name']} has no pods")
    spec: Doc = template["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    template = pod_template(workload)
    if template is None:
        raise ManifestError(f"{workload['kind']} {workload['metadata']['name']} has no pods")
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def containers(doc: Doc) -> Iterator[Doc]:
    """Every container of a workload's pod template, init containers first."""
    template = pod_template(doc)
    if template is None:
        return
    spec = template["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise ManifestError(f"no {kind} named {name!r} in the manifests")


def selects(service: Doc, workload: Doc) -> bool:
    """Whether a Service's selector matches the pods of a workload."""
    selector = service["spec"].get("selector") or {}
    labels = pod_labels(workload)
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def named_ports(container: Doc) -> dict[str, int]:
    """A container's ports by name (what Services and probes refer to)."""
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def config_maps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def container_env(
    container: Doc, pod_name: str, namespace: str, maps: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The environment the kubelet gives ``container`` in pod ``pod_name``.

    ``envFrom`` first, then ``env`` in order; ``$(NAME)`` in a value is replaced by an earlier
    variable's value (Kubernetes leaves unknown references as they are). Secrets are not read:
    the manifests mark them optional, and none exist where these tests run.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            if ref["name"] not in maps:
                if ref.get("optional"):
                    continue
                raise ManifestError(f"ConfigMap {ref['name']!r} is not in the manifests")
            env.update(maps[ref["name"]])
        elif "secretRef" in source:
            if not source["secretRef"].get("optional"):
                raise ManifestError(f"secret {source['secretRef']['name']!r} must be optional")
        else:
            raise ManifestError(f"envFrom {source} is not understood here")
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _REFERENCE.sub(lambda m: env.get(m[1], m[0]), str(var["value"]))
        elif "fieldRef" in var.get("valueFrom", {}):
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise ManifestError(f"fieldRef {path} is not understood here")
            env[var["name"]] = fields[path]
        else:
            raise ManifestError(f"env {var['name']}: {var} is not understood here")
    return env


@dataclass(frozen=True)
class PodSpec:
    """One pod of a workload: its name, its workload's document and its pod template."""

    name: str
    workload: Doc

    @property
    def namespace(self) -> str:
        return str(self.workload["metadata"].get("namespace", "default"))

    @property
    def spec(self) -> Doc:
        return pod_spec(self.workload)


def pods(docs: list[Doc]) -> list[PodSpec]:
    """The pods the workloads ask for, in the order of the manifests: StatefulSet pods are
    NAME-0, NAME-1, ... as in Kubernetes; Deployment pods are NAME-0, ... here (Kubernetes
    adds random suffixes)."""
    out: list[PodSpec] = []
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment"):
            replicas = int(doc["spec"].get("replicas", 1))
            out.extend(PodSpec(f"{doc['metadata']['name']}-{i}", doc) for i in range(replicas))
    return out
