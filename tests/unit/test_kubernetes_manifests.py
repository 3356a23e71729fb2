"""The Kubernetes manifests (deploy/kubernetes): rendered with ``kubectl kustomize``, validated offline against the
Kubernetes OpenAPI schema (kubernetes-validate, strict), and cross-checked against the code and docker-compose.yml.

Needs ``kubectl`` (it bundles kustomize); without it the tests skip, except with CI=true, where they fail.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT
from visinspect_api.model_repository import OVMS_IMAGE
from visinspect_server.grpc.server import SERVICE_NAME
from visinspect_server.settings import ServerSettings, parse

KUSTOMIZE_ROOT = REPO_ROOT / "deploy" / "kubernetes"
TARGETS = ("base", "overlays/edge", "overlays/cluster")
KUBERNETES_VERSION = "1.32"  # the kubectl these were written against (kustomize v5.5)
NO_KUBECTL = "kubectl is not installed: it renders the kustomizations (kubectl kustomize)"

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
FACADE, OVMS = "visinspect-facade", "visinspect-ovms"
PVC = "visinspect-model-repository"
# The uid of the `ovms` user in OVMS's own image (Dockerfile.ubuntu: useradd ... --uid 5000 ... ovms).
OVMS_IMAGE_UID = 5000
# Which Deployment each Service, PodDisruptionBudget and HorizontalPodAutoscaler is meant for.
SERVICE_TARGETS = {OVMS: OVMS, FACADE: FACADE, "visinspect-facade-headless": FACADE}
PDB_TARGETS = {OVMS: OVMS, FACADE: FACADE}
COMMON_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
COMPONENTS = {FACADE: "facade", OVMS: "model-server"}


def require_kubectl() -> str:
    """The kubectl binary; skips without one, except with CI=true, where the test fails."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(NO_KUBECTL)
        pytest.skip(NO_KUBECTL)
    return kubectl


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Every target's objects, rendered once (the three in parallel)."""
    kubectl = require_kubectl()

    def render(target: str) -> list[dict]:
        result = subprocess.run(
            [kubectl, "kustomize", str(KUSTOMIZE_ROOT / target)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    with ThreadPoolExecutor(len(TARGETS)) as pool:
        return dict(zip(TARGETS, pool.map(render, TARGETS), strict=True))


class Objects:
    """One rendered target, looked up by kind and name."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs

    def of(self, kind: str) -> dict[str, dict]:
        return {doc["metadata"]["name"]: doc for doc in self.docs if doc["kind"] == kind}

    def one(self, kind: str, name: str) -> dict:
        found = self.of(kind)
        assert name in found, f"no {kind} {name}; there are {sorted(found)}"
        return found[name]

    def container(self, deployment: str) -> dict:
        (container,) = self.one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
        return container


@pytest.fixture(params=TARGETS)
def objects(request: pytest.FixtureRequest, rendered: dict[str, list[dict]]) -> Objects:
    return Objects(rendered[request.param])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def selected_deployments(objects: Objects, selector: dict[str, str]) -> set[str]:
    return {
        name
        for name, deployment in objects.of("Deployment").items()
        if selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
    }


def container_port(container: dict, port: int | str) -> int:
    """A container port by number or by name (a Service's targetPort, a probe's port)."""
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    if isinstance(port, str):
        assert port in ports, f"no container port named {port!r} in {container['name']}"
        return ports[port]
    assert port in ports.values(), f"no container port {port} in {container['name']}"
    return port


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (cpu in cores, memory in bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def arg_value(args: list[str], flag: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in args if arg.startswith(flag + "=")]
    return value


def pod_specs(objects: Objects) -> Iterator[tuple[str, dict]]:
    for name, deployment in objects.of("Deployment").items():
        yield name, deployment["spec"]["template"]["spec"]


# --- schema -----------------------------------------------------------------------------------------------


def test_every_object_validates_against_the_kubernetes_schema(objects: Objects) -> None:
    kinds = {doc["kind"] for doc in objects.docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for doc in objects.docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {error.message}")


def test_strict_validation_rejects_unknown_fields(rendered: dict[str, list[dict]]) -> None:
    deployment = copy.deepcopy(Objects(rendered["base"]).one("Deployment", FACADE))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- selectors and references -----------------------------------------------------------------------------


def test_deployment_selectors_select_only_their_own_pods(objects: Objects) -> None:
    deployments = objects.of("Deployment")
    assert set(deployments) == {FACADE, OVMS}
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/component"}
        assert selected_deployments(objects, selector) == {name}


def test_services_select_exactly_the_intended_deployment_and_its_ports(objects: Objects) -> None:
    services = objects.of("Service")
    assert set(services) == set(SERVICE_TARGETS)
    for name, service in services.items():
        target = SERVICE_TARGETS[name]
        assert selected_deployments(objects, service["spec"]["selector"]) == {target}, name
        container = objects.container(target)
        for port in service["spec"]["ports"]:
            assert container_port(container, port["targetPort"]) == port["port"], f"{name} port {port['name']}"


def test_the_headless_service_is_headless_and_serves_grpc(objects: Objects) -> None:
    headless = objects.one("Service", "visinspect-facade-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert [port["port"] for port in headless["ports"]] == [ServerSettings.port]
    assert objects.one("Service", FACADE)["spec"]["type"] == "ClusterIP"


def test_disruption_budgets_and_autoscalers_point_at_existing_deployments(objects: Objects) -> None:
    budgets = objects.of("PodDisruptionBudget")
    assert set(budgets) == set(PDB_TARGETS)
    for name, budget in budgets.items():
        assert selected_deployments(objects, budget["spec"]["selector"]["matchLabels"]) == {PDB_TARGETS[name]}
    deployments = objects.of("Deployment")
    for name, autoscaler in objects.of("HorizontalPodAutoscaler").items():
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment"), name
        assert target["name"] in deployments, name
        assert target["name"] == FACADE  # OVMS is not autoscaled (see base/autoscaling.yaml)
        (metric,) = autoscaler["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert "cpu" in objects.container(target["name"])["resources"]["requests"]  # Utilization needs it


PROMETHEUS = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def rule_ports(rule: dict) -> set[int]:
    return {port["port"] for port in rule["ports"]}


def test_network_policies_let_only_the_facade_reach_ovms(objects: Objects) -> None:
    policies = objects.of("NetworkPolicy")
    assert set(policies) == {"visinspect-ovms-ingress", "visinspect-facade-ingress"}
    ovms_policy = policies["visinspect-ovms-ingress"]["spec"]
    assert selected_deployments(objects, ovms_policy["podSelector"]["matchLabels"]) == {OVMS}
    assert ovms_policy["policyTypes"] == ["Ingress"]
    facade_rule, scrape_rule = ovms_policy["ingress"]
    (source,) = facade_rule["from"]
    assert set(source) == {"podSelector"}  # same namespace only
    assert selected_deployments(objects, source["podSelector"]["matchLabels"]) == {FACADE}
    ovms = objects.container(OVMS)
    assert rule_ports(facade_rule) == {port["containerPort"] for port in ovms["ports"]} == {9000, 8000}
    assert scrape_rule["from"] == [PROMETHEUS]
    assert rule_ports(scrape_rule) == {int(arg_value(ovms["args"], "--rest_port"))}  # /metrics only
    assert "--metrics_enable" in ovms["args"]

    facade_policy = policies["visinspect-facade-ingress"]["spec"]
    assert selected_deployments(objects, facade_policy["podSelector"]["matchLabels"]) == {FACADE}
    open_rule, scrape_rule = facade_policy["ingress"]
    assert "from" not in open_rule and rule_ports(open_rule) == {ServerSettings.port}  # gRPC from anywhere
    assert scrape_rule["from"] == [PROMETHEUS]
    assert rule_ports(scrape_rule) == {ServerSettings.metrics_port}


def test_common_labels_on_every_object_and_pod(objects: Objects) -> None:
    for doc in objects.docs:
        labels = doc["metadata"].get("labels", {})
        assert set(COMMON_LABELS) <= set(labels), f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels["app.kubernetes.io/part-of"] == "visinspect"
    for name, deployment in objects.of("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == COMPONENTS[name]
        assert labels["app.kubernetes.io/part-of"] == "visinspect"
    # An object that serves one Deployment carries that Deployment's name and component.
    owners = [("Service", SERVICE_TARGETS), ("PodDisruptionBudget", PDB_TARGETS), ("HorizontalPodAutoscaler", {})]
    for kind, targets in owners:
        for name, doc in objects.of(kind).items():
            target = targets.get(name) or doc["spec"]["scaleTargetRef"]["name"]
            labels = objects.one("Deployment", target)["metadata"]["labels"]
            for key in COMMON_LABELS:
                assert doc["metadata"]["labels"][key] == labels[key], f"{kind}/{name} {key}"


# --- the facade against the server's code -----------------------------------------------------------------


def test_facade_probes_use_the_health_names_the_server_publishes(objects: Objects) -> None:
    facade = objects.container(FACADE)
    readiness = facade["readinessProbe"]["grpc"]
    assert readiness == {"port": ServerSettings.port, "service": SERVICE_NAME}
    # The server publishes "" with the same status as SERVICE_NAME (NOT_SERVING while OVMS is down): as a
    # liveness check it would restart healthy facades, so liveness is "the gRPC port accepts connections".
    liveness = facade["livenessProbe"]
    if "grpc" in liveness:
        assert liveness["grpc"].get("service", "") in ("", SERVICE_NAME)
        assert liveness["grpc"]["port"] == ServerSettings.port
    else:
        assert container_port(facade, liveness["tcpSocket"]["port"]) == ServerSettings.port


def test_facade_arguments_are_the_compose_ones_and_agree_with_the_server_defaults(objects: Objects) -> None:
    facade = objects.container(FACADE)
    args = facade["args"]
    compose = COMPOSE["services"]["facade"]
    assert facade["image"] == compose["image"]
    assert [arg for arg in args if not arg.startswith("--ovms-address=")] == [
        arg for arg in compose["command"] if not arg.startswith("--ovms-address=")
    ]
    assert args[0] == "serve"
    env = {entry["name"]: entry["value"] for entry in facade.get("env", [])}
    settings = parse(args[1:])
    assert settings.backend == "kserve"
    assert (settings.port, settings.metrics_port) == (ServerSettings.port, ServerSettings.metrics_port)
    assert container_port(facade, "grpc") == settings.port == 50051
    assert container_port(facade, "metrics") == settings.metrics_port == 9090
    for name, value in env.items():  # every VISINSPECT_* variable is a setting the server accepts
        assert name.startswith("VISINSPECT_")
        setting = name.removeprefix("VISINSPECT_").lower()
        assert setting in ServerSettings.__dataclass_fields__, name
        parse([*args[1:], f"--{setting.replace('_', '-')}={value}"])
    mounts = {mount["mountPath"]: mount for mount in facade["volumeMounts"]}
    assert mounts[str(settings.model_repository)]["readOnly"] is True
    cache = Path(env["VISINSPECT_CACHE_DIR"])
    assert any(cache.is_relative_to(path) and path != "/models" for path in mounts)  # writable, on an emptyDir


def test_facade_reaches_the_ovms_service_on_its_grpc_port(objects: Objects) -> None:
    host, _, port = arg_value(objects.container(FACADE)["args"], "--ovms-address").rpartition(":")
    service = objects.one("Service", host)  # a Service name of the same namespace
    assert selected_deployments(objects, service["spec"]["selector"]) == {OVMS}
    (service_port,) = [entry for entry in service["spec"]["ports"] if entry["port"] == int(port)]
    ovms = objects.container(OVMS)
    assert container_port(ovms, service_port["targetPort"]) == int(arg_value(ovms["args"], "--port"))


def test_facade_has_no_service_link_variables(objects: Objects) -> None:
    # The server reads VISINSPECT_<SETTING>; Kubernetes' service links would add <SERVICE>_PORT=tcp://... ones.
    assert objects.one("Deployment", FACADE)["spec"]["template"]["spec"]["enableServiceLinks"] is False


# --- OVMS against docker-compose.yml -----------------------------------------------------------------------


def test_ovms_mirrors_the_compose_service(objects: Objects) -> None:
    ovms = objects.container(OVMS)
    compose = COMPOSE["services"]["ovms"]
    assert ovms["image"] == compose["image"] == OVMS_IMAGE  # the release the exporter's OpenVINO matches
    assert ovms["args"] == compose["command"]
    rest_port = int(arg_value(ovms["args"], "--rest_port"))
    assert f"http://localhost:{rest_port}/v2/health/ready" in compose["healthcheck"]["test"]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert ovms[probe]["httpGet"]["path"] == path
        assert container_port(ovms, ovms[probe]["httpGet"]["port"]) == rest_port
    config = Path(arg_value(ovms["args"], "--config_path"))
    mounts = {mount["mountPath"]: mount for mount in ovms["volumeMounts"]}
    assert mounts[str(config.parent)]["readOnly"] is True


# --- security and resources ---------------------------------------------------------------------------------


def test_pods_run_locked_down(objects: Objects) -> None:
    (image_uid,) = re.findall(r"useradd .*--uid (\d+)", (REPO_ROOT / "server" / "Dockerfile").read_text())
    assert image_uid == "10001"
    expected_uid = {FACADE: int(image_uid), OVMS: OVMS_IMAGE_UID}
    for name, spec in pod_specs(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == expected_uid[name]
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            writable = {mount["mountPath"] for mount in container["volumeMounts"] if not mount.get("readOnly")}
            assert "/tmp" in writable, name
            for mount in container["volumeMounts"]:
                volume = volumes[mount["name"]]
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"] == {"claimName": PVC, "readOnly": True}
                    assert mount["readOnly"] is True
                else:
                    assert "emptyDir" in volume, f"{name}: writable mounts are emptyDirs"


def test_every_container_has_requests_within_limits(objects: Objects) -> None:
    for name, spec in pod_specs(objects):
        for container in spec["containers"]:
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{name} {resource}"


def suite_table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under ``heading`` in docs/benchmarks/suite.md."""
    text = (REPO_ROOT / "docs" / "benchmarks" / "suite.md").read_text()
    (section,) = [part for part in text.split("\n## ") if part.startswith(heading)]
    lines = section.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :])  # past header and rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table]


def peak_rss_mb(heading: str) -> dict[int, float]:
    """Facade peak RSS (MB) by client count from a load table of the benchmark suite."""
    return {int(row[0]): float(row[-1]) for row in suite_table(heading)}


@pytest.mark.parametrize("target", TARGETS)
def test_memory_covers_the_measured_peaks(rendered: dict[str, list[dict]], target: str) -> None:
    """Requests >= the measured peak RSS (16 clients; the edge box: 8), limits >= 1.5 x the 16-client peak.
    OVMS is sized from the embedded server, which holds the same compiled model in-process."""
    objects = Objects(rendered[target])
    clients = 8 if target == "overlays/edge" else 16
    for deployment, heading in ((FACADE, "Load, kserve backend"), (OVMS, "Load, embedded backend")):
        peaks = peak_rss_mb(heading)
        resources = objects.container(deployment)["resources"]
        assert quantity(resources["requests"]["memory"]) >= peaks[clients] * 1e6, deployment
        assert quantity(resources["limits"]["memory"]) >= 1.5 * peaks[16] * 1e6, deployment


# --- what the overlays change -------------------------------------------------------------------------------


def test_base_replicas(rendered: dict[str, list[dict]]) -> None:
    objects = Objects(rendered["base"])
    assert "replicas" not in objects.one("Deployment", FACADE)["spec"]  # the autoscaler owns it
    assert objects.one("Deployment", OVMS)["spec"]["replicas"] == 1
    autoscaler = objects.one("HorizontalPodAutoscaler", FACADE)["spec"]
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (1, 4)
    for budget in objects.of("PodDisruptionBudget").values():
        assert budget["spec"]["maxUnavailable"] == 1  # a single replica can still be drained
    assert objects.one("PersistentVolumeClaim", PVC)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_edge_is_one_of_each_without_autoscaler(rendered: dict[str, list[dict]]) -> None:
    edge, base = Objects(rendered["overlays/edge"]), Objects(rendered["base"])
    assert edge.of("HorizontalPodAutoscaler") == {}
    for name in (FACADE, OVMS):
        assert edge.one("Deployment", name)["spec"]["replicas"] == 1
        smaller = edge.container(name)["resources"]["requests"]["cpu"]
        assert quantity(smaller) < quantity(base.container(name)["resources"]["requests"]["cpu"])
    assert edge.one("PersistentVolumeClaim", PVC)["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_cluster_runs_several_of_each(rendered: dict[str, list[dict]]) -> None:
    cluster = Objects(rendered["overlays/cluster"])
    assert "replicas" not in cluster.one("Deployment", FACADE)["spec"]
    autoscaler = cluster.one("HorizontalPodAutoscaler", FACADE)["spec"]
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, 8)
    assert cluster.one("Deployment", OVMS)["spec"]["replicas"] == 2
    for budget in cluster.of("PodDisruptionBudget").values():
        assert budget["spec"] == {"minAvailable": 1, "selector": budget["spec"]["selector"]}
    for name, spec in pod_specs(cluster):
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert selected_deployments(cluster, spread["labelSelector"]["matchLabels"]) == {name}
    assert cluster.one("PersistentVolumeClaim", PVC)["spec"]["accessModes"] == ["ReadWriteMany"]
