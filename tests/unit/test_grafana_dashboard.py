"""The monitoring files: the Grafana dashboard asks only for metrics the server exports, by labels they have, through
the provisioned datasource; the provisioning and Prometheus files point where they should."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import fields
from functools import cache
from types import SimpleNamespace

import grpc
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from tests.conftest import REPO_ROOT
from visinspect_server.grpc.security import ServerSecurity
from visinspect_server.observability import Metrics
from visinspect_server.settings import ServerSettings, parse

MONITORING = REPO_ROOT / "deploy" / "monitoring"
GRAFANA = MONITORING / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DASHBOARD = json.loads((DASHBOARD_DIR / "visinspect.json").read_text(encoding="utf-8"))
DATASOURCES = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
PROVIDERS = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "visinspect.yml").read_text())
PROMETHEUS = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
DASHBOARD_MOUNT = "/var/lib/grafana/dashboards"  # where the compose grafana service mounts DASHBOARD_DIR

# OpenVINO Model Server's metrics and their labels, from "Available metrics families" in docs/metrics.md of
# github.com/openvinotoolkit/model_server (docs.openvino.ai: "Metrics", ovms_docs_metrics), served on the REST port's
# /metrics with --metrics_enable. Its counters carry no `_total` suffix (see the doc's metrics_output.out example);
# its histograms export `_bucket` (with `le`), `_count` and `_sum`.
_OVMS_COUNTERS = {
    "ovms_requests_success": {"api", "interface", "method", "name", "version"},
    "ovms_requests_fail": {"api", "interface", "method", "name", "version"},
}
_OVMS_GAUGES = {"ovms_streams": {"name", "version"}, "ovms_current_requests": {"name", "version"}}
_OVMS_HISTOGRAMS = {
    "ovms_request_time_us": {"interface", "name", "version"},
    "ovms_inference_time_us": {"name", "version"},
    "ovms_wait_for_infer_req_time_us": {"name", "version"},
}
OVMS_SAMPLES = {
    **_OVMS_COUNTERS,
    **_OVMS_GAUGES,
    **{f"{name}_bucket": labels | {"le"} for name, labels in _OVMS_HISTOGRAMS.items()},
    **{f"{name}_{suffix}": labels for name, labels in _OVMS_HISTOGRAMS.items() for suffix in ("count", "sum")},
}

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_PROMQL_WORDS |= {"and", "or", "unless", "inf", "nan"}
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.])((?:visinspect|ovms)_\w+)\s*(\{[^}]*\})?")
_LABEL_VALUES = re.compile(r"label_values\((\w+(?:\{[^}]*\})?),\s*(\w+)\)")


@cache
def server_samples() -> dict[str, frozenset[str]]:
    """Every sample name the server exports, with its label names, from a fresh :class:`Metrics` registry."""
    metrics = Metrics()
    for collector in vars(metrics).values():
        # a labelled metric exports samples once it has a child; prometheus_client has no public label-name getter
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(**dict.fromkeys(collector._labelnames, "probe"))  # nothing observed
    _reject_one_call(metrics.registry)
    samples: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in samples.items()}


def _reject_one_call(registry: object) -> None:
    """Registers security.py's counter the way the server does (``interceptors(metrics.registry)``) and has the
    interceptor reject one call without a token, so the counter exports its samples."""
    [interceptor] = ServerSecurity(tokens=(b"secret",)).interceptors(registry)
    handler = grpc.unary_unary_rpc_method_handler(lambda _request, _context: None)

    async def continuation(_details: object) -> grpc.RpcMethodHandler:
        return handler

    call = SimpleNamespace(method="/visinspect.v1.Inspector/Detect", invocation_metadata=())
    asyncio.run(interceptor.intercept_service(continuation, call))


def labels_of(metric: str) -> frozenset[str]:
    if metric.startswith("ovms_"):
        assert metric in OVMS_SAMPLES, f"{metric} is not an OVMS metric documented in docs/metrics.md"
        return frozenset(OVMS_SAMPLES[metric])
    assert metric in server_samples(), f"{metric} is not exported by visinspect-server: {sorted(server_samples())}"
    return server_samples()[metric]


def _without_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers left once label values, matchers, range and offset
    durations and label lists are removed, that are neither followed by ``(`` (functions, aggregations) nor
    PromQL keywords."""
    text = _without_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if match.group(2) is None and match.group(1).lower() not in _PROMQL_WORDS:
            names.add(match.group(1))
    return names


def _group(text: str, start: int, step: int) -> str:
    """The parenthesised group whose opening (step 1) or closing (step -1) parenthesis is at ``start``."""
    depth, index = 0, start
    while True:
        depth += {"(": step, ")": -step}.get(text[index], 0)
        if depth == 0:
            return text[min(start, index) : max(start, index) + 1]
        index += step


def grouping_scopes(expr: str) -> list[tuple[str, set[str], str]]:
    """(keyword, labels, the sub-expression they apply to) for every label list in ``expr``: an aggregation's
    argument for ``by``/``without`` (prefix ``sum by (l) (x)`` or suffix ``sum (x) by (l)`` form), the whole
    expression for the vector-matching ones."""
    text = _without_strings(expr)
    scopes = []
    for match in _LABEL_LIST.finditer(text):
        labels = {label.strip() for label in match.group(2).split(",") if label.strip()}
        if match.group(1) in {"by", "without"}:
            after = match.end() + len(text[match.end() :]) - len(text[match.end() :].lstrip())
            if after < len(text) and text[after] == "(":
                scope = _group(text, after, 1)
            else:
                before = len(text[: match.start()].rstrip()) - 1
                assert text[before] == ")", f"cannot tell what {match.group(0)!r} groups in {expr!r}"
                scope = _group(text, before, -1)
        else:
            scope = text
        scopes.append((match.group(1), labels, scope))
    return scopes


def all_panels() -> list[dict]:
    panels = []
    for panel in DASHBOARD["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return panels


def query_panels() -> list[dict]:
    return [panel for panel in all_panels() if panel["type"] != "row"]


def variable_query(variable: dict) -> re.Match[str]:
    """A query variable's ``label_values(selector, label)``, Grafana's function rather than PromQL."""
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    match = _LABEL_VALUES.fullmatch(query)
    assert match, f"variable {variable['name']!r}: expected label_values(metric, label), got {query!r}"
    return match


def exprs() -> list[tuple[str, str]]:
    """(where, PromQL expression) for every panel target and the selectors of the template variables' queries."""
    found = [(f"panel {panel['title']!r}", target["expr"]) for panel in query_panels() for target in panel["targets"]]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']!r}", variable_query(variable).group(1)))
    return found


def datasource_uid() -> str:
    [datasource] = DATASOURCES["datasources"]
    return datasource["uid"]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 1e-3, "s": 1, "m": 60}[match.group(2)]


def scrape_targets(job_name: str) -> list[str]:
    [job] = [job for job in PROMETHEUS["scrape_configs"] if job["job_name"] == job_name]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    return [target for config in job["static_configs"] for target in config["targets"]]


def volume(service: dict, target: str) -> tuple[str, str]:
    """(source, options) of the bind mount of ``service`` at ``target``."""
    for entry in service.get("volumes", []):
        source, mounted, *options = entry.split(":")
        if mounted == target:
            return source, ",".join(options)
    raise AssertionError(f"nothing is mounted at {target}: {service.get('volumes')}")


# --- the metric extraction itself ----------------------------------------------------------------------------


def test_metric_names_leave_out_functions_keywords_and_labels() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(visinspect_score_bucket{model=~"$model"}[5m] offset 1h)))'
        " / on (model) group_left sum without (le) (rate(other_metric[$__rate_interval])) or vector(1e-9)"
    )
    assert metric_names(expr) == {"visinspect_score_bucket", "other_metric"}
    assert [(kind, labels) for kind, labels, _ in grouping_scopes(expr)] == [
        ("by", {"model", "le"}),
        ("on", {"model"}),
        ("without", {"le"}),
    ]
    assert grouping_scopes("sum(rate(a_b[1m])) by (c)")[0][2] == "(rate(a_b[1m]))"


def test_the_server_exports_what_the_exporter_promises() -> None:
    samples = server_samples()
    assert samples["visinspect_requests_total"] == {"method", "code"}
    assert samples["visinspect_request_seconds_bucket"] == {"method", "le"}
    assert samples["visinspect_auth_rejected_total"] == {"method"}
    assert samples["visinspect_calls_in_flight"] == frozenset()
    assert "visinspect_score_count" in samples and "visinspect_anomalies_created" in samples


# --- the dashboard -------------------------------------------------------------------------------------------


def test_dashboard_has_a_title_a_uid_a_modern_schema_and_unique_panel_ids() -> None:
    assert DASHBOARD["title"] and DASHBOARD["uid"] and len(DASHBOARD["uid"]) <= 40
    assert DASHBOARD["schemaVersion"] >= 39
    ids = [panel["id"] for panel in all_panels()]
    assert len(ids) == len(set(ids)), ids
    for panel in all_panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    assert {panel["type"] for panel in query_panels()} <= {"timeseries", "stat", "heatmap", "bargauge", "table"}


def test_dashboard_has_the_model_variable_from_the_server_metrics() -> None:
    [model] = [variable for variable in DASHBOARD["templating"]["list"] if variable["name"] == "model"]
    assert model["type"] == "query" and model["multi"] and model["includeAll"]
    assert model["datasource"]["uid"] == datasource_uid()
    selector, label = variable_query(model).groups()
    assert label == "model"
    for metric in metric_names(selector):
        assert "model" in labels_of(metric)


def test_every_panel_queries_the_provisioned_datasource() -> None:
    uid = datasource_uid()
    for panel in query_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]
    for row in (panel for panel in all_panels() if panel["type"] == "row"):
        assert not row.get("targets"), row["title"]


def test_every_panel_uses_only_metrics_the_server_or_ovms_exports() -> None:
    for where, expr in exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            assert name.startswith(("visinspect_", "ovms_")), f"{where}: unknown metric {name!r}"
            labels_of(name)  # fails for a name nobody exports
    for panel in query_panels():
        used = {name for target in panel["targets"] for name in metric_names(target["expr"])}
        assert any(name.startswith(("visinspect_", "ovms_")) for name in used), panel["title"]


def test_every_label_a_query_uses_is_a_label_of_its_metrics() -> None:
    for where, expr in exprs():
        for metric, matchers in _SELECTOR.findall(_without_strings(expr)):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in labels_of(metric), f"{where}: {metric} has no label {label!r}"
        for keyword, labels, scope in grouping_scopes(expr):
            for metric in metric_names(scope):
                missing = labels - labels_of(metric)
                assert not missing, f"{where}: {keyword} {sorted(missing)} but {metric} has {sorted(labels_of(metric))}"


def test_every_legend_names_a_label_of_the_queried_metrics() -> None:
    for panel in query_panels():
        for target in panel["targets"]:
            known = set().union(*(labels_of(name) for name in metric_names(target["expr"])))
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                assert label in known, f"panel {panel['title']!r}: legend label {label!r} not in {sorted(known)}"


def test_dashboard_covers_what_an_operator_watches() -> None:
    used = {name for _, expr in exprs() for name in metric_names(expr)}
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", name) for name in server_samples()}
    assert families <= {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    per_model = [
        panel for panel in query_panels() if any('model=~"$model"' in target["expr"] for target in panel["targets"])
    ]
    assert len(per_model) >= 5
    assert any(panel["type"] == "heatmap" and panel.get("repeat") == "model" for panel in query_panels())


# --- provisioning and Prometheus -----------------------------------------------------------------------------


def test_datasource_provisioning_points_at_prometheus() -> None:
    assert DATASOURCES["apiVersion"] == 1
    [datasource] = DATASOURCES["datasources"]
    assert datasource["type"] == "prometheus" and datasource["access"] == "proxy"
    assert datasource["url"] == "http://prometheus:9090"
    assert re.fullmatch(r"[\w-]{1,40}", datasource["uid"])
    assert seconds(datasource["jsonData"]["timeInterval"]) == seconds(PROMETHEUS["global"]["scrape_interval"])


def test_dashboard_provider_loads_the_dashboard_folder() -> None:
    assert PROVIDERS["apiVersion"] == 1
    [provider] = PROVIDERS["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARD_MOUNT
    dashboards = sorted(DASHBOARD_DIR.glob("*.json"))
    assert [path.name for path in dashboards] == ["visinspect.json"]
    assert sorted(path.name for path in DASHBOARD_DIR.iterdir()) == ["visinspect.json"]


def test_prometheus_scrapes_the_facade_and_ovms_often_enough() -> None:
    assert 5 <= seconds(PROMETHEUS["global"]["scrape_interval"]) <= 15
    for job in PROMETHEUS["scrape_configs"]:
        assert 5 <= seconds(job.get("scrape_interval", PROMETHEUS["global"]["scrape_interval"])) <= 15
    default_port = {field.name: field.default for field in fields(ServerSettings)}["metrics_port"]
    assert scrape_targets("visinspect-facade") == [f"facade:{default_port}"]
    facade = parse(COMPOSE["services"]["facade"]["command"][1:])
    assert facade.metrics_port == default_port
    [rest_port] = [flag.split("=")[1] for flag in COMPOSE["services"]["ovms"]["command"] if "--rest_port=" in flag]
    assert scrape_targets("ovms") == [f"ovms:{rest_port}"]


def test_compose_monitoring_profile_mounts_these_files() -> None:
    services = COMPOSE["services"]
    if "prometheus" not in services or "grafana" not in services:
        pytest.skip("docker-compose.yml has no monitoring profile yet")
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service, image in ((prometheus, "prom/prometheus"), (grafana, "grafana/grafana")):
        assert service["profiles"] == ["monitoring"]
        name, _, tag = service["image"].partition(":")
        assert name == image and tag and tag != "latest", service["image"]
    assert volume(prometheus, "/etc/prometheus/prometheus.yml") == ("./deploy/monitoring/prometheus.yml", "ro")
    assert volume(grafana, "/etc/grafana/provisioning") == ("./deploy/monitoring/grafana/provisioning", "ro")
    assert volume(grafana, DASHBOARD_MOUNT) == ("./deploy/monitoring/grafana/dashboards", "ro")
    published = {mapping.split(":")[0] for service in services.values() for mapping in service.get("ports", [])}
    assert len(published) == sum(len(service.get("ports", [])) for service in services.values())  # no host clash
    assert "--metrics_enable" in services["ovms"]["command"]  # the OVMS scrape job needs it
