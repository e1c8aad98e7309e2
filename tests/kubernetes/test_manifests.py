"""deploy/kubernetes without a cluster: the API schemas, the settings, the wiring between pods.

No Kubernetes distribution can be installed on these machines (no registry for kind's node
image, no k3s package), so the manifests are checked here against the Kubernetes API's own
OpenAPI schemas (kubernetes-validate, offline), and tests/kubernetes/test_pods.py runs their
pods on Docker.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pscluster.config import Settings
from tests.kubernetes.manifests import (
    KUBERNETES,
    ROOT,
    Doc,
    config_maps,
    container_env,
    containers,
    find,
    named_ports,
    pod_spec,
    pod_template,
    pods,
    render,
    selects,
)

BASE = KUBERNETES / "base"
GPU = KUBERNETES / "gpu"
DATA = KUBERNETES / "data"
# The oldest release still in wide use that has every field used here, and the newest known.
VERSIONS = ("1.29.0", "1.37.0")
SETTINGS = {f"PSC_{name.upper()}" for name in Settings.model_fields}


def all_docs() -> list[tuple[str, Doc]]:
    return [(folder.name, doc) for folder in (BASE, GPU, DATA) for doc in render(folder)]


def label(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api(version: str) -> None:
    # Prepare
    docs = all_docs()
    assert {label(d) for _, d in docs} >= {
        "StatefulSet/ps",
        "StatefulSet/coordinator",
        "Deployment/worker",
        "Deployment/worker-gpu",
        "Service/ps",
        "Service/coordinator",
        "PersistentVolumeClaim/pscluster-data",
    }
    # Execute / Assert: strict, so that a misspelt or misplaced field is an error too.
    for folder, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{folder}: {label(doc)} is invalid for Kubernetes {version}: {e}")


def test_the_schema_check_catches_a_misplaced_field() -> None:
    # Prepare: the shard StatefulSet with `port` where Kubernetes expects `containerPort`.
    shard = copy.deepcopy(find(render(BASE), "StatefulSet", "ps"))
    pod_spec(shard)["containers"][0]["ports"][0] = {"port": 50061}
    # Execute / Assert
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(shard, VERSIONS[-1], strict=True)


def test_this_reader_renders_as_kustomize_does() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the reader's output is not compared with it")
    for folder in (BASE, GPU, DATA):
        done = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
        )
        ours = sorted(render(folder), key=label)
        theirs = sorted(yaml.safe_load_all(done.stdout), key=label)
        assert ours == theirs, folder


def test_every_psc_variable_is_a_setting_with_a_valid_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pscluster ignores unknown PSC_* variables (a typo would be silently dropped), so each
    name set anywhere in deploy/ and compose.yaml must be a field of Settings, and each
    pod's environment must load."""
    # Prepare
    docs = all_docs()
    maps = config_maps([d for _, d in docs])
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    compose_names = {
        name for service in compose["services"].values() for name in service.get("environment", {})
    }
    # Execute / Assert
    assert compose_names - SETTINGS == set(), "compose.yaml sets unknown PSC_* variables"
    for folder, doc in docs:
        for pod in pods([doc]):
            for container in containers(doc):
                env = container_env(container, pod.name, pod.namespace, maps)
                unknown = {k for k in env if k.startswith("PSC_")} - SETTINGS
                assert not unknown, f"{folder}: {label(doc)} {container['name']} sets {unknown}"
                with monkeypatch.context() as m:
                    for key in [k for k in os.environ if k.startswith("PSC_")]:
                        m.delenv(key)
                    for key, value in env.items():
                        m.setenv(key, value)
                    Settings()  # raises ValidationError for a value of the wrong kind


def _port(address: str) -> int:
    host, _, port = address.rpartition(":")
    assert host and port.isdigit(), f"{address!r} is not host:port"
    return int(port)


def test_pods_find_each_other_where_the_settings_say() -> None:
    # Prepare
    docs = render(BASE)
    maps = config_maps(docs)
    shard_set = find(docs, "StatefulSet", "ps")
    coordinator_set = find(docs, "StatefulSet", "coordinator")
    worker_set = find(docs, "Deployment", "worker")
    shard_service = find(docs, "Service", shard_set["spec"]["serviceName"])
    coordinator_service = find(docs, "Service", "coordinator")
    shard_pods = [p for p in pods(docs) if p.workload is shard_set]
    coordinator_pod = next(p for p in pods(docs) if p.workload is coordinator_set)
    worker_pod = next(p for p in pods(docs) if p.workload is worker_set)

    def env(pod: Any, name: str) -> dict[str, str]:
        container = next(c for c in containers(pod.workload) if c["name"] == name)
        return container_env(container, pod.name, pod.namespace, maps)

    # Assert: shard ps-i registers under its pod name at ps-i.<headless service>:<its port>,
    # with the coordinator's Service; the coordinator is given no list, so replicas alone
    # decide how many shards there are.
    assert shard_service["spec"]["clusterIP"] == "None" and selects(shard_service, shard_set)
    shard_container = pod_spec(shard_set)["containers"][0]
    shard_port = named_ports(shard_container)["grpc"]
    for pod in shard_pods:
        shard_env = env(pod, "shard")
        assert int(shard_env["PSC_SHARD_PORT"]) == shard_port
        assert shard_env["PSC_ADVERTISE"] == (
            f"{pod.name}.{shard_service['metadata']['name']}:{shard_port}"
        )
        assert shard_env["PSC_SHARD_ID"] == pod.name
        assert shard_env["PSC_COORDINATOR"] == env(worker_pod, "worker")["PSC_COORDINATOR"]
    assert "PSC_SHARDS" not in env(coordinator_pod, "coordinator")

    # Workers call the coordinator's Service, which leads to its gRPC port.
    assert selects(coordinator_service, coordinator_set)
    coordinator_container = pod_spec(coordinator_set)["containers"][0]
    grpc_port = named_ports(coordinator_container)["grpc"]
    assert int(env(coordinator_pod, "coordinator")["PSC_COORDINATOR_PORT"]) == grpc_port
    host, _, port = env(worker_pod, "worker")["PSC_COORDINATOR"].rpartition(":")
    service_ports = {p["port"]: p["targetPort"] for p in coordinator_service["spec"]["ports"]}
    assert host == coordinator_service["metadata"]["name"]
    assert service_ports[int(port)] == "grpc"

    # Every Service port leads to a named port of the pods it selects.
    for service in (d for d in docs if d["kind"] == "Service"):
        workloads = [d for d in docs if pod_template(d) is not None and selects(service, d)]
        assert workloads, f"{label(service)} selects no pods"
        for workload in workloads:
            names = {n for c in containers(workload) for n in named_ports(c)}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in names, f"{label(service)} -> {label(workload)}"


def test_probes_and_metrics_use_the_ports_the_processes_listen_on() -> None:
    docs = all_docs()
    maps = config_maps([d for _, d in docs])
    for folder, doc in docs:
        template = pod_template(doc)
        if template is None:
            continue
        annotations = template["metadata"].get("annotations", {})
        for container in template["spec"]["containers"]:
            env = container_env(container, "pod-0", "pscluster", maps)
            ports = named_ports(container)
            # Prometheus finds the series where the process serves them.
            assert int(env["PSC_METRICS_PORT"]) == ports["metrics"]
            assert int(annotations["prometheus.io/port"]) == ports["metrics"]
            assert annotations["prometheus.io/scrape"] == "true"
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                command = probe["exec"]["command"]
                assert command[0] == "psc-health", f"{folder}: {label(doc)} {kind}"
                assert _port(command[-1]) == ports["grpc"], f"{folder}: {label(doc)} {kind}"


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    # Prepare: the uid the image creates its user with.
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    match = re.search(r"useradd [^\n]*--uid (\d+)", dockerfile)
    assert match, "deploy/Dockerfile no longer creates its user with a fixed --uid"
    uid = int(match[1])
    namespace = find(render(BASE), "Namespace", "pscluster")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Assert
    for folder, doc in all_docs():
        template = pod_template(doc)
        if template is None:
            continue
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid, label(doc)
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", label(doc)
        assert template["spec"].get("hostNetwork") is not True
        for container in containers(doc):
            security = container["securityContext"]
            where = f"{folder}: {label(doc)} {container['name']}"
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security["readOnlyRootFilesystem"] is True, where
            assert "add" not in security["capabilities"], where


def test_state_lives_on_volumes_that_outlive_the_pods() -> None:
    docs = render(BASE)
    maps = config_maps(docs)
    for name, variable in (("ps", "PSC_SHARD_DATA_DIR"), ("coordinator", "PSC_STATE_DIR")):
        workload = find(docs, "StatefulSet", name)
        claims = {c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]}
        container = pod_spec(workload)["containers"][0]
        directory = Path(container_env(container, f"{name}-0", "pscluster", maps)[variable])
        mounts = {Path(m["mountPath"]): m["name"] for m in container["volumeMounts"]}
        on = [mounts[p] for p in mounts if directory == p or p in directory.parents]
        assert on and on[0] in claims, f"{name}: {variable}={directory} is not on a claim"
    assert find(docs, "StatefulSet", "coordinator")["spec"]["replicas"] == 1


def test_the_data_overlay_mounts_the_claim_read_only_in_every_worker() -> None:
    docs = render(DATA)
    worker = find(docs, "Deployment", "worker")
    spec = pod_spec(worker)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {
        "claimName": "pscluster-data",
        "readOnly": True,
    }
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert {"/tmp", "/dev/shm"} <= mounts.keys()  # the base's mounts are kept
    claim = find(docs, "PersistentVolumeClaim", "pscluster-data")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert claim["metadata"]["namespace"] == "pscluster"
    # The base itself is unchanged: its workers run without any claim.
    assert "data" not in {
        v["name"] for v in pod_spec(find(render(BASE), "Deployment", "worker"))["volumes"]
    }
