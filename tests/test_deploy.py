"""The deployment artefacts: alert rules (promtool), Grafana, Kubernetes, compose, Dockerfile.

promtool comes from Debian's ``prometheus`` package; the tests that need it are skipped, saying so,
only when it is not installed. Kubernetes manifests are validated offline against the schemas that
kubernetes-validate ships, for a pinned Kubernetes version.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "cart-link-proxy.json"
RUNBOOK = DEPLOY / "RUNBOOK.md"
K8S_VERSION = "1.30.0"
"""Kubernetes version the manifests must be valid for (kubernetes-validate ships its schemas)."""
K8S_MANIFESTS = ("configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Grafana's variables, replaced by something PromQL accepts before the expression is parsed.
GRAFANA_SUBSTITUTIONS = (
    ("$__rate_interval", "5m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yaml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and annotation queries."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard()["annotations"]["list"] if "expr" in a]
    return exprs


def substitute_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_SUBSTITUTIONS:
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)


def docker_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# --- Prometheus ------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(PROMETHEUS / "alerts.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: str) -> None:
    result = run(promtool, "test", "rules", "alerts_test.yaml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_scrape_config(promtool: str, tmp_path: Path) -> None:
    # The compose file mounts the rules at /etc/prometheus; point at the repo's copy instead.
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    config["rule_files"] = [str(PROMETHEUS / "alerts.yaml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    targets = [
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert "proxy:9108" in targets


def test_every_alert_has_severity_summary_and_runbook_section() -> None:
    runbook = RUNBOOK.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\S+)\s*$", runbook, flags=re.MULTILINE))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket", "warning"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"deploy/RUNBOOK.md#{name.lower()}", name
        assert name in headings, f"{name} has no '## {name}' section in {RUNBOOK.name}"
    assert headings >= {rule["alert"] for rule in alert_rules()}


def test_issue_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= {
        "CartLinkProxyHigh5xxRate",
        "CartLinkProxyUpstreamErrors",
        "CartLinkProxyLatencySLOBurnFast",
        "CartLinkProxyLatencySLOBurnSlow",
        "CartLinkProxyRedisCircuitOpen",
        "CartLinkProxyBlockedLinksJumpAfterFlagChange",
        "CartLinkProxyKillSwitchOn",
    }


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yaml")["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        name = rule["alert"]
        outcomes = {bool(c["exp_alerts"]) for c in checks if c["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a firing and a not-firing test"


# --- Grafana ---------------------------------------------------------------------------------


def test_dashboard_has_a_prometheus_datasource_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    panels = dashboard_panels()
    assert len(panels) >= 15
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for annotation in dashboard()["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE


def test_dashboard_layout_is_sound() -> None:
    all_panels = dashboard()["panels"]
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    assert dashboard()["uid"] == "cart-link-proxy"


@pytest.mark.parametrize(
    "topic",
    [
        "Requests/s",
        "Error rate",
        "latency p50 / p99",
        "Proxy overhead",
        "Inspection latency",
        "by surface, platform and action",
        "Shadow vs enforce",
        "Rollout mode",
        "Rollout percent",
        "Kill switch",
        "cache hit ratio",
        "Redis errors",
        "Circuit state",
        "resolver outcomes",
        "resolver latency",
        "In-flight",
        "Policy version",
    ],
)
def test_dashboard_covers(topic: str) -> None:
    titles = [p["title"].lower() for p in dashboard_panels()]
    assert any(topic.lower() in title for title in titles), topic


def test_every_dashboard_expression_parses(promtool: str, tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:expr_{i}:check", "expr": substitute_grafana_variables(expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), "utf-8")
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]
    provider = load_yaml(provisioning / "dashboards" / "cart-link-proxy.yaml")["providers"][0]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert (
        f"./grafana/cart-link-proxy.json:{provider['options']['path']}/cart-link-proxy.json:ro"
        in mounts
    )


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection (validation must be offline)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access during validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def k8s_documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if doc]


@pytest.mark.parametrize("name", K8S_MANIFESTS)
def test_manifest_is_valid_kubernetes(name: str, no_network: None) -> None:
    import kubernetes_validate

    for doc in k8s_documents(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validator_rejects_a_broken_manifest(no_network: None) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    doc = k8s_documents("deployment.yaml")[0]
    doc["spec"]["replicas"] = "three"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(K8S_MANIFESTS)


def deployment() -> dict[str, Any]:
    return k8s_documents("deployment.yaml")[0]


def test_deployment_runs_three_hardened_replicas() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]


def test_deployment_probes_drain_and_ports() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9108, "admin": 9109}
    # Health lives on the metrics port: every path on the proxy port is the cart service's.
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 30
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_deployment_secrets_and_policy_mount() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name in ("REDIS_URL", "CART_PROXY_ADMIN_TOKEN"):
        assert "value" not in env[name], f"{name} must come from a Secret"
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cart-link-proxy"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["policy"]["mountPath"] == "/etc/cart-link-proxy/policy.yaml"
    assert mounts["policy"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    configmap = k8s_documents("configmap.yaml")[0]
    assert volumes["policy"]["configMap"]["name"] == configmap["metadata"]["name"]
    args = container["args"]
    assert args[args.index("--config") + 1] == "/etc/cart-link-proxy/policy.yaml"


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert deployment()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s_documents("service.yaml")[0]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    pdb = k8s_documents("pdb.yaml")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = k8s_documents("hpa.yaml")[0]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment()["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 3


def test_configmap_embeds_the_policy_byte_for_byte() -> None:
    configmap = k8s_documents("configmap.yaml")[0]
    policy = (ROOT / "config" / "policy.yaml").read_bytes()
    assert configmap["data"]["policy.yaml"].encode("utf-8") == policy, (
        "deploy/k8s/configmap.yaml is stale: run python deploy/k8s/render-configmap.py"
    )


def test_render_configmap_check_passes() -> None:
    result = run(sys.executable, str(K8S / "render-configmap.py"), "--check")
    assert result.returncode == 0, result.stderr


# --- compose ---------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(data, dict)
    return data


def test_compose_runs_the_whole_stack() -> None:
    services = compose()["services"]
    assert set(services) >= {"proxy", "cart", "redis", "prometheus", "grafana"}
    proxy = services["proxy"]
    assert proxy["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert proxy["environment"]["CART_PROXY_UPSTREAM"] == "http://cart:8081"
    assert (
        "./prometheus/alerts.yaml:/etc/prometheus/alerts.yaml:ro"
        in services["prometheus"]["volumes"]
    )


def test_compose_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    return docker_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    instructions = dockerfile()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) >= 2
    assert froms[0].endswith(" AS builder")
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    runs = " ".join(a for k, a in dockerfile() if k == "RUN")
    assert "pip wheel" in runs


def test_dockerfile_final_stage_is_non_root_without_build_tools() -> None:
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    runs = " ".join(args for keyword, args in stage if keyword == "RUN")
    for tool in ("build-essential", "gcc", "apt-get install"):
        assert tool not in runs
    assert "--no-index" in runs, "the final stage installs only the builder's wheels"


def test_dockerfile_entrypoint_healthcheck_and_signal() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["cart-link-proxy"]
    cmd = json.loads(stage["CMD"])
    assert cmd[:3] == ["serve", "--config", "/etc/cart-link-proxy/policy.yaml"]
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert set(stage["EXPOSE"].split()) >= {"8080", "9108"}
    healthcheck = stage["HEALTHCHECK"]
    exec_form = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert exec_form[:2] == ["python", "-c"]
    assert "urllib" in exec_form[2]
    assert "/healthz" in exec_form[2]
    compile(exec_form[2], "HEALTHCHECK", "exec")


def test_dockerignore_keeps_what_the_build_needs() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", "tests"} <= patterns
    needed = {"pyproject.toml", "README.md", "proxy", "config", "config/policy.yaml"}
    assert not needed & patterns
    assert all(not p.lstrip("!/").startswith(("proxy", "config")) for p in patterns)


# --- the deploy files speak the real CLI and settings ---------------------------------------


def _settings_for(args: list[str], env: dict[str, str]) -> Any:
    """Parse ``args`` with the real CLI and build the settings ``serve`` would run with."""
    from proxy.cli import build_parser
    from proxy.config import settings_from_policy
    from proxy.policyfile import load_policy

    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve"
    overrides = {"host": parsed.host, "port": parsed.port, "upstream": parsed.upstream,
                 "workers": parsed.workers, "metrics_port": parsed.metrics_port,
                 "admin_port": parsed.admin_port}
    return settings_from_policy(load_policy(ROOT / "config" / "policy.yaml"), env=env,
                                overrides=overrides)


def _known_env() -> set[str]:
    from proxy.config import _ENV, ADMIN_TOKEN_ENV, REDIS_URL_ENV

    return {*_ENV, ADMIN_TOKEN_ENV, REDIS_URL_ENV, "CART_PROXY_CONFIG"}


SECRETS = {"REDIS_URL": "redis://redis:6379/0", "CART_PROXY_ADMIN_TOKEN": "x" * 32}


def test_deployment_args_and_env_are_the_real_cli_and_settings() -> None:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", SECRETS.get(e["name"], "")) for e in container["env"]}
    assert set(env) <= _known_env(), set(env) - _known_env()
    settings = _settings_for(container["args"], env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (settings.port, settings.metrics_port, settings.admin_port) == (
        ports["http"], ports["metrics"], ports["admin"])
    assert settings.host == "0.0.0.0"
    assert settings.redis is not None


def test_compose_commands_are_the_real_cli() -> None:
    from proxy.cli import build_parser

    services = compose()["services"]
    proxy = services["proxy"]
    env = {**proxy["environment"]}
    assert set(env) <= _known_env(), set(env) - _known_env()
    settings = _settings_for(proxy["command"], env)
    published = {int(p.rsplit(":", 1)[1]) for p in proxy["ports"]}
    assert published == {settings.port, settings.metrics_port, settings.admin_port}
    assert any(p.startswith("127.0.0.1:") and p.endswith(f":{settings.admin_port}")
               for p in proxy["ports"]), "the admin API is published on localhost only"
    demo = build_parser().parse_args(services["cart"]["command"])
    assert (demo.command, demo.host, demo.port + 1) == ("demo", "0.0.0.0", 8081)
    assert env["CART_PROXY_UPSTREAM"].endswith(":8081")
