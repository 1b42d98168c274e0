"""The deployment files agree with the code: env names, drain arithmetic, probes, metric names.

Fast and offline: parses the Dockerfile, docker-compose.yml, deploy/ (Kubernetes, Prometheus,
Grafana, nginx) and docs/deployment.md; no Docker, cluster or Prometheus needed. Every setting the
files pass to the gateway must be a field of :class:`callscribe.config.Settings` (or a known
external variable), and the values must load.

``python -m tests.test_deploy_files`` regenerates deploy/k8s/prometheusrule.yaml from
deploy/prometheus/rules.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from callscribe.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_RULE = K8S / "prometheusrule.yaml"
DOCS = ROOT / "docs" / "deployment.md"

# The metrics the gateway exports (issue #5); the files may reference no other callscribe_ name.
METRICS = {
    "callscribe_active_calls": "gauge",
    "callscribe_calls_total": "counter",
    "callscribe_calls_refused_total": "counter",
    "callscribe_frames_received_total": "counter",
    "callscribe_frames_forwarded_total": "counter",
    "callscribe_frames_dropped_total": "counter",
    "callscribe_malformed_messages_total": "counter",
    "callscribe_engine_reconnects_total": "counter",
    "callscribe_final_latency_seconds": "histogram",
    "callscribe_first_partial_latency_seconds": "histogram",
    "callscribe_sink_errors_total": "counter",
    "callscribe_event_loop_lag_seconds": "histogram",
    "callscribe_signature_rejections_total": "counter",
    "callscribe_redactions_total": "counter",
    "callscribe_triggers_fired_total": "counter",
}
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

# Variables that are not callscribe settings but legitimately set in the files.
EXTERNAL_EXACT = {"PROMETHEUS_MULTIPROC_DIR", "OMP_NUM_THREADS", "PATH"}
EXTERNAL_PREFIXES = ("OTEL_", "PYTHON", "HF_", "XDG_", "PIP_")
# Named in docs/deployment.md without being settings: other programs' variables, Compose's own.
DOC_EXTRA = {"POSTGRES_PASSWORD", "CALLSCRIBE_BIND"}

SETTINGS = {name.upper() for name in Settings.model_fields}


def is_known_env(name: str) -> bool:
    return name in SETTINGS or name in EXTERNAL_EXACT or name.startswith(EXTERNAL_PREFIXES)


# --- loaders ------------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    return [COMPOSE, *files]


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_all(path) if "kind" in doc]


def k8s(kind: str, name: str = "callscribe") -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "callscribe")


def configmap() -> dict[str, str]:
    return k8s("ConfigMap", "callscribe-config")["data"]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def gateway_service() -> dict[str, Any]:
    return compose()["services"]["gateway"]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR-default}`` → default (as with an empty .env)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args.strip()))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in stage:
        if instr != "ENV":
            continue
        if "=" not in args.split()[0]:  # legacy "ENV NAME value"
            name, _, value = args.partition(" ")
            env[name] = value.strip()
            continue
        for pair in re.findall(r"""([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|'[^']*'|\S*)""", args):
            env[pair[0]] = pair[1].strip("\"'")
    return env


def duration_seconds(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value):
        total += float(number) * units[unit]
    return total


def metric_names(text: str) -> set[str]:
    """callscribe_* series in PromQL (recording-rule names use ':' and are not matched)."""
    return set(re.findall(r"\bcallscribe_[a-z0-9_]+\b", text))


def base_metric(series: str) -> str:
    if series in METRICS:
        return series
    for suffix in _HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base) == "histogram":
            return base
    return series


def prometheus_rule_from_rules() -> dict[str, Any]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "callscribe",
            "namespace": "callscribe",
            "labels": {"app.kubernetes.io/name": "callscribe"},
        },
        "spec": rules,
    }


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(SETTINGS):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(env_file=None)


# --- every file parses --------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert load_all(path), f"{path} is empty"


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(ROOT)))
def test_json_parses(path: Path) -> None:
    json.loads(path.read_text(encoding="utf-8"))


def test_k8s_documents_are_namespaced_and_labelled() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "Ingress", "Namespace"} <= kinds
    for doc in docs:
        if doc["kind"] in {"Namespace", "Kustomization"}:
            continue
        assert doc["metadata"].get("namespace") == "callscribe", doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "callscribe", doc["kind"]


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    assert "secret.example.yaml" not in kustomization["resources"]


# --- env names are settings ---------------------------------------------------------------------


def test_dockerfile_env_names_are_settings() -> None:
    for stage in dockerfile_stages():
        for name in dockerfile_env(stage):
            assert is_known_env(name), f"Dockerfile sets {name}, which no setting reads"


def test_compose_gateway_env_names_are_settings() -> None:
    for name in compose_env(gateway_service()):
        assert is_known_env(name), f"docker-compose.yml sets {name}, which no setting reads"


def test_k8s_env_names_are_settings() -> None:
    names = set(configmap())
    names |= set(k8s("Secret", "callscribe-secrets")["stringData"])
    names |= {e["name"] for e in container().get("env", [])}
    for name in sorted(names):
        assert is_known_env(name), f"deploy/k8s sets {name}, which no setting reads"


def test_env_values_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The values themselves pass Settings' validation (PUBLIC_URL, SINKS, API_KEYS JSON, …)."""
    runtime_env = dockerfile_env(dockerfile_stages()[-1])
    for env in (
        runtime_env,
        runtime_env | compose_env(gateway_service()),
        runtime_env | configmap() | k8s("Secret", "callscribe-secrets")["stringData"],
    ):
        settings = settings_from({k: v for k, v in env.items() if k.upper() in SETTINGS}, monkeypatch)
        assert settings.http_host == "0.0.0.0"
        assert settings.log_format == "json"
    assert settings.public_url is not None and settings.public_url.scheme == "https"
    assert settings.twilio_auth_token is not None
    assert {k.name for k in settings.api_keys} >= {"prometheus"}
    assert settings.database_url.startswith("postgresql+asyncpg://")


# --- drain and grace periods --------------------------------------------------------------------


def _drain(env: dict[str, str]) -> float:
    deadline = float(env.get("DRAIN_DEADLINE", Settings.model_fields["drain_deadline"].default))
    timeout = float(env.get("DRAIN_TIMEOUT", Settings.model_fields["drain_timeout"].default))
    return deadline + timeout


def _prestop_seconds(c: dict[str, Any]) -> float:
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    assert command[:1] == ["sleep"], "preStop should sleep so endpoints drop the pod before SIGTERM"
    return float(command[1])


def test_k8s_grace_period_covers_the_drain() -> None:
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    prestop = _prestop_seconds(container())
    assert prestop >= 3
    grace = spec["terminationGracePeriodSeconds"]
    # the grace period runs from deletion: the preStop hook is inside it
    assert grace > prestop + _drain(configmap()) + 5, (grace, prestop, _drain(configmap()))


def test_compose_stop_grace_covers_the_drain() -> None:
    service = gateway_service()
    assert duration_seconds(service["stop_grace_period"]) > _drain(compose_env(service)) + 5


# --- probes, security, volumes ------------------------------------------------------------------


def test_probes() -> None:
    c = container()
    port_names = {p["name"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = c[probe]["httpGet"]["port"]
        assert port in port_names or port in {p["containerPort"] for p in c["ports"]}
    http_port = int(configmap().get("HTTP_PORT", Settings.model_fields["http_port"].default))
    assert {p["containerPort"] for p in c["ports"]} == {http_port}


def test_pod_security() -> None:
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    c = container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "cpu" in c["resources"]["requests"] and "memory" in c["resources"]["limits"]


def test_writable_dirs_are_empty_dirs() -> None:
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    c = container()
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert mounts.get("/tmp") in empty_dirs
    assert mounts.get(env["PROMETHEUS_MULTIPROC_DIR"]) in empty_dirs


def test_service_ingress_hpa_pdb_point_at_the_deployment() -> None:
    deployment = k8s("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = k8s("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container()["ports"]}
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = k8s("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB and a rolling drain need a second pod
    for rule in k8s("Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] == service["metadata"]["name"]


# --- metrics: HPA, adapter, rules, dashboard ----------------------------------------------------


def test_metric_list_matches_the_code() -> None:
    """The names above are the ones the code registers (string literals under src/callscribe)."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src" / "callscribe").rglob("*.py"))
    defined = set(re.findall(r"[\"'](callscribe_[a-z0-9_]+)[\"']", source))
    if not defined & set(METRICS) - {"callscribe_active_calls"}:
        pytest.skip("the gateway's metrics are not defined yet")
    assert not set(METRICS) - defined, f"not registered by the code: {sorted(set(METRICS) - defined)}"


def test_hpa_metric_is_exported() -> None:
    pods_metrics = [
        m["pods"]["metric"]["name"]
        for m in k8s("HorizontalPodAutoscaler")["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert pods_metrics == ["callscribe_active_calls"]
    assert all(name in METRICS for name in pods_metrics)
    adapter = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text(encoding="utf-8"))
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert set(pods_metrics) <= served
    for rule in adapter["rules"]["custom"]:
        assert metric_names(rule["seriesQuery"]) <= set(METRICS)


def _rule_exprs(groups: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r.get("alert") or r["record"], str(r["expr"])) for g in groups for r in g["rules"]]


def test_rules_reference_exported_metrics() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    exprs = _rule_exprs(groups)
    assert exprs
    for name, expr in exprs:
        for series in metric_names(expr):
            assert base_metric(series) in METRICS, f"{name}: {series} is not an exported metric"
            if METRICS[base_metric(series)] == "histogram":
                assert series.endswith(_HISTOGRAM_SERIES), f"{name}: use {series}_bucket/_sum/_count"
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for name, expr in exprs:  # recording rules used by others exist
        for used in re.findall(r"\bcallscribe:[a-z0-9_:]+", expr):
            assert used in recorded, f"{name}: {used} is not recorded"
    alerts = " ".join(expr for name, expr in exprs if name.startswith("Callscribe"))
    for needed in ("final_latency", "calls_refused", "frames_dropped", "event_loop_lag"):
        assert needed in alerts, f"no alert on {needed}"


def test_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["rules.yml"]
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    assert "gateway:5000" in targets


def test_prometheusrule_matches_rules_file() -> None:
    assert load_all(PROMETHEUS_RULE) == [prometheus_rule_from_rules()], (
        "deploy/k8s/prometheusrule.yaml is stale: run python -m tests.test_deploy_files"
    )


def test_dashboard_references_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "callscribe-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        for series in metric_names(expr):
            assert base_metric(series) in METRICS, series


# --- Dockerfile, Compose, ingress, nginx ---------------------------------------------------------


def test_dockerfile() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build"
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M) or "FROM python:3.11-slim" in text
    runtime = stages[-1]
    instrs = [i for i, _ in runtime]
    users = [args for i, args in runtime if i == "USER"]
    assert users, "runtime stage sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert any(i == "COPY" and "--from=" in a for i, a in runtime), "runtime copies from the build stage"
    health = [args for i, args in runtime if i == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1] and "python" in health[-1]
    env = dockerfile_env(runtime)
    assert env["HTTP_HOST"] == "0.0.0.0"
    assert env["LOG_FORMAT"] == "json"
    assert env["OMP_NUM_THREADS"] == "1"
    assert [a for i, a in runtime if i == "EXPOSE"] == [env.get("HTTP_PORT", "5000")]
    assert "ENTRYPOINT" in instrs or "CMD" in instrs
    assert '"serve"' in text
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "*" in ignored or ".env" in ignored, ".env must stay out of the build context"
    assert "!.env" not in ignored


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"gateway", "postgres", "redis", "prometheus"} <= set(services)
    for name in ("gateway", "postgres", "redis", "prometheus"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    gateway = services["gateway"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    env = compose_env(gateway)
    assert env["DATABASE_URL"].startswith("postgresql+asyncpg://") and "@postgres:" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert "/healthz" in " ".join(map(str, gateway["healthcheck"]["test"]))
    mounted = [v for v in services["prometheus"]["volumes"] if v.startswith("./deploy/prometheus")]
    assert mounted


def test_several_workers_share_live_events() -> None:
    """Live feeds are per process: with WORKERS > 1 (or several pods) they need REDIS_URL."""
    env = compose_env(gateway_service())
    if int(env.get("WORKERS", "1")) > 1:
        assert env.get("REDIS_URL")
    assert "REDIS_URL" in k8s("Secret", "callscribe-secrets")["stringData"]


def test_ingress_websocket_and_sse_settings() -> None:
    ingress = k8s("Ingress")
    ann = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert int(ann[prefix + "proxy-read-timeout"]) >= 3600
    assert int(ann[prefix + "proxy-send-timeout"]) >= 3600
    assert ann[prefix + "proxy-body-size"]
    assert ann[prefix + "proxy-buffering"] == "off"
    paths = {p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert {"/twiml", "/media", "/live", "/events", "/api", "/"} <= paths
    assert not paths & {"/metrics", "/healthz", "/readyz"}
    hosts = {r["host"] for r in ingress["spec"]["rules"]}
    public_url = configmap()["PUBLIC_URL"]
    assert re.sub(r"^https://", "", public_url).rstrip("/") in hosts, "PUBLIC_URL must be the Ingress host"


def test_nginx_example() -> None:
    conf = (DEPLOY / "nginx" / "callscribe.conf").read_text(encoding="utf-8")
    assert "proxy_set_header Upgrade" in conf and "$connection_upgrade" in conf
    assert "X-Forwarded-Proto" in conf and "X-Forwarded-Host" in conf
    locations = dict(re.findall(r"location\s+([^{]*?)\s*\{(.*?)\n    \}", conf, re.S))
    events = locations["/events"]
    assert "proxy_buffering off" in events
    for name in ("= /media", "/live", "/events"):
        timeout = re.search(r"proxy_read_timeout (\d+)s", locations[name])
        assert timeout and int(timeout.group(1)) >= 3600, name
    assert "deny all" in locations["= /metrics"]


# --- docs ---------------------------------------------------------------------------------------


def test_docs_name_real_settings() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for heading in ("Laptop", "Compose", "Kubernetes", "TRUSTED_PROXIES", "PUBLIC_URL", "grace"):
        assert heading in text, heading
    names = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text))
    unknown = sorted(n for n in names if not is_known_env(n) and n not in DOC_EXTRA)
    assert not unknown, f"docs/deployment.md names variables no setting reads: {unknown}"
    for name in METRICS:
        assert name in text, f"docs/deployment.md does not list metric {name}"


if __name__ == "__main__":
    header = PROMETHEUS_RULE.read_text(encoding="utf-8").split("apiVersion:", 1)[0]
    PROMETHEUS_RULE.write_text(
        header + yaml.safe_dump(prometheus_rule_from_rules(), sort_keys=False, allow_unicode=True, width=110),
        encoding="utf-8",
    )
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
