"""Run the pods of deploy/kubernetes on Docker, as a kubelet would run them, for the tests.

No Kubernetes can run here, so this gives each pod what Kubernetes would give it, from the
manifests alone, and nothing else:

- its containers from the pod template: the image, ``command``/``args``, the environment
  (tests/kubernetes/manifests.py resolves ``$(VAR)``, ``fieldRef`` and ConfigMaps), the
  securityContext (uid and gid, fsGroup, no capabilities, no new privileges, a read-only root),
  ``emptyDir`` volumes (tmpfs) and claims (one Docker volume per pod and claim, as a
  StatefulSet's volumeClaimTemplates give);
- cluster DNS: ``POD.SERVICE`` for a headless Service and ``SERVICE`` for another one, each
  also with ``.NAMESPACE``, ``.NAMESPACE.svc`` and ``.NAMESPACE.svc.cluster.local`` (Docker's
  resolver answers for network aliases);
- one internal network per namespace, as the NetworkPolicy allows (nothing outside);
- init containers to completion before the pod's containers, and the exec probes polled until
  the pod is ready;
- ``kubectl port-forward`` of one Service port to 127.0.0.1 (through a second network,
  since an internal network publishes nothing).

What it does not do: scheduling, restarts, resource requests and the NetworkPolicy's ingress
rules. A pod here is one container: the manifests' pods have one container each (plus
init containers).
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from tests.containers.compose import DockerError, run_docker
from tests.kubernetes.manifests import (
    Doc,
    PodSpec,
    config_maps,
    container_env,
    named_ports,
    pods,
    selects,
)
from tests.support import wait_for


def _aliases(pod: PodSpec, services: list[Doc]) -> list[str]:
    """The names cluster DNS gives ``pod``: its Services' names (``POD.SERVICE`` for a
    headless one), each also in its namespace's longer forms."""
    names = []
    for service in services:
        if selects(service, pod.workload):
            name = service["metadata"]["name"]
            names.append(
                f"{pod.name}.{name}" if service["spec"].get("clusterIP") == "None" else name
            )
    ns = pod.namespace
    return [n + s for n in names for s in ("", f".{ns}", f".{ns}.svc", f".{ns}.svc.cluster.local")]


def _logs(container: str, tail: int) -> str:
    """The container's stdout and stderr, interleaved (pscluster logs to stderr)."""
    done = subprocess.run(
        ["docker", "logs", "--tail", str(tail), container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout


@dataclass
class PodRunner:
    """The pods of ``docs`` on Docker, under one random prefix; ``close()`` removes it all."""

    docs: list[Doc]
    prefix: str = field(default_factory=lambda: f"psc-k8s-{secrets.token_hex(4)}")
    created: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    @property
    def network(self) -> str:
        return f"{self.prefix}-cluster"

    def container(self, pod_name: str) -> str:
        return f"{self.prefix}-{pod_name}"

    def start(self, forward: Mapping[str, int], ready_timeout: float = 240) -> None:
        """Run every pod in manifest order, each ready before the next starts.

        ``forward``: Service name -> a free 127.0.0.1 port that its first port is published on.
        """
        run_docker(["network", "create", "--internal", self.network], timeout=60)
        self.networks.append(self.network)
        services = [d for d in self.docs if d["kind"] == "Service"]
        maps = config_maps(self.docs)
        for pod in pods(self.docs):
            published = [
                (port, s)
                for s in services
                if s["metadata"]["name"] in forward and selects(s, pod.workload)
                for port in [forward[s["metadata"]["name"]]]
            ]
            for init in pod.spec.get("initContainers", []):
                self._run_init(pod, init, maps, ready_timeout)
            self._run(pod, maps, _aliases(pod, services), published)
            self._wait_ready(pod, ready_timeout)

    def _docker_args(
        self, pod: PodSpec, container: Doc, maps: Mapping[str, Mapping[str, str]]
    ) -> list[str]:
        pod_security = pod.spec.get("securityContext", {})
        security = container.get("securityContext", {})
        args = ["--hostname", pod.name]
        uid = security.get("runAsUser", pod_security.get("runAsUser"))
        gid = security.get("runAsGroup", pod_security.get("runAsGroup"))
        if uid is not None:
            args += ["--user", f"{uid}:{gid if gid is not None else uid}"]
        if "fsGroup" in pod_security:
            args += ["--group-add", str(pod_security["fsGroup"])]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for capability in security.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", capability]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        env = container_env(container, pod.name, pod.namespace, maps)
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        claims = {
            c["metadata"]["name"] for c in pod.workload["spec"].get("volumeClaimTemplates", [])
        }
        for mount in container.get("volumeMounts", []):
            name, path = mount["name"], mount["mountPath"]
            if name in claims:
                volume = f"{self.prefix}-{name}-{pod.name}"
                if volume not in self.volumes:
                    run_docker(["volume", "create", volume], timeout=60)
                    self.volumes.append(volume)
                args += ["--mount", f"type=volume,source={volume},destination={path}"]
            elif "emptyDir" in volumes.get(name, {}):
                args += ["--mount", f"type=tmpfs,destination={path},tmpfs-mode=1777"]
            else:
                raise ValueError(f"{pod.name}: volume {name!r} is not a claim or an emptyDir")
        if "command" in container:
            args += ["--entrypoint", container["command"][0]]
        args.append(container["image"])
        args += [*container.get("command", [])[1:], *container.get("args", [])]
        return args

    def _run_init(
        self, pod: PodSpec, init: Doc, maps: Mapping[str, Mapping[str, str]], timeout: float
    ) -> None:
        name = self.container(f"{pod.name}-{init['name']}")
        self.created.append(name)
        command = ["run", "--name", name, "--network", self.network]
        run_docker([*command, *self._docker_args(pod, init, maps)], timeout=timeout)

    def _run(
        self,
        pod: PodSpec,
        maps: Mapping[str, Mapping[str, str]],
        aliases: list[str],
        published: list[tuple[int, Doc]],
    ) -> None:
        (container,) = pod.spec["containers"]
        name = self.container(pod.name)
        create = ["create", "--name", name]
        if not published:
            create += ["--network", self.network]
            create += [a for alias in aliases for a in ("--network-alias", alias)]
        else:
            # Published ports need a network with a way out; the cluster network joins after.
            edge = f"{self.prefix}-edge"
            if edge not in self.networks:
                run_docker(["network", "create", edge], timeout=60)
                self.networks.append(edge)
            create += ["--network", edge]
            ports = named_ports(container)
            for host_port, service in published:
                target = service["spec"]["ports"][0]["targetPort"]
                target = ports[target] if isinstance(target, str) else target
                create += ["--publish", f"127.0.0.1:{host_port}:{target}"]
        run_docker([*create, *self._docker_args(pod, container, maps)], timeout=120)
        self.created.append(name)
        if published:
            connect = ["network", "connect", *[a for alias in aliases for a in ("--alias", alias)]]
            run_docker([*connect, self.network, name], timeout=60)
        run_docker(["start", name], timeout=120)

    def _wait_ready(self, pod: PodSpec, timeout: float) -> None:
        """Poll the container's startup and readiness exec probes until both pass."""
        (container,) = pod.spec["containers"]
        probes = [container[k] for k in ("startupProbe", "readinessProbe") if k in container]
        deadline = time.monotonic() + timeout
        failures: list[DockerError] = []
        for probe in probes:
            wait_for(
                partial(self._probe_passes, pod, probe, failures),
                max(0.0, deadline - time.monotonic()),
                what=f"pod {pod.name} ready: {shlex.join(probe['exec']['command'])}",
                poll=1.0,
                context=lambda: f"last: {failures[-1:]}\n{self.logs(pod.name)}",
            )

    def _probe_passes(self, pod: PodSpec, probe: Doc, failures: list[DockerError]) -> bool:
        """Run an exec probe in the pod's container as the kubelet would; a failure is kept."""
        command = ["exec", self.container(pod.name), *probe["exec"]["command"]]
        try:
            run_docker(command, timeout=probe.get("timeoutSeconds", 1) + 30)
        except DockerError as e:
            failures.append(e)
            return False
        return True

    def exec(self, pod_name: str, *command: str, timeout: float = 60) -> str:
        return run_docker(["exec", self.container(pod_name), *command], timeout=timeout)

    def logs(self, pod_name: str, tail: int = 60) -> str:
        return _logs(self.container(pod_name), tail)

    def all_logs(self, tail: int = 40) -> str:
        return "\n".join(f"=== {name}\n{_logs(name, tail)}" for name in self.created)

    def close(self) -> None:
        """Remove the containers, then the volumes and networks they used."""
        commands = [["rm", "-f", "-v", name] for name in self.created]
        commands += [["volume", "rm", "-f", volume] for volume in self.volumes]
        commands += [["network", "rm", network] for network in self.networks]
        for command in commands:
            with contextlib.suppress(DockerError):
                run_docker(command, timeout=60)
