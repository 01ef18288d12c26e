"""The deployment files: docker-compose.yml, Dockerfile, Prometheus config, Grafana dashboards.

There is no Docker engine here. The compose file is validated against the Compose
Specification JSON schema (vendored in tests/data, see compose-spec.SOURCE.md), then checked
for what a schema cannot see: mounted paths exist, every service has a healthcheck, host ports
are unique and documented. The Prometheus config that compose mounts goes through
`promtool check config`. Every dashboard query, and every rule expression in
prometheus/alerts.yml, is run against a real `prometheus` binary: first on an empty one (the
syntax), then on one scraping a live syncmon fed by the simulator (every dashboard query must
return data, and every table column a panel declares must be one its query gives). Panels whose
truth depends on history (a check that recovers, a top 10 over a range) are run on a scrape
target whose /metrics the test writes. `prometheus` and `promtool` come from Debian's
`prometheus` package.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from monitor.metrics import PER_SYNC
from monitor.rules import Thresholds, verdicts
from monitor.services import dies_with, free_port
from monitor.views import SyncView

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
PROVISIONING = ROOT / "grafana" / "provisioning"
ALERTS_FILE = ROOT / "prometheus" / "alerts.yml"
README = ROOT / "README.md"
DATASOURCE_UID = "prometheus"
SYNCMON = [sys.executable, "-m", "monitor.cli"]

# Grafana's built-in variables, as the live test substitutes them.
BUILTINS = {
    "__rate_interval": "30s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$")
PER_SYNC_METRICS = frozenset(name for name, _ in PER_SYNC.values())


# --- loading ------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def tool(name: str) -> str:
    """Path of a Debian `prometheus` package binary, or a clear failure (never a skip)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` not found on PATH: install Debian's prometheus package "
            "(apt-get install -y prometheus; stop the daemon it starts)",
            pytrace=False,
        )
    return found


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of each bind mount (short or long syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/", "~")):
                mounts.append((parts[0], parts[1]))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def named_volumes(service: dict[str, Any]) -> list[str]:
    names = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":")[0]
            if ":" in volume and not source.startswith((".", "/", "~")):
                names.append(source)
        elif volume.get("type") == "volume" and volume.get("source"):
            names.append(volume["source"])
    return names


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(host ip, host port, protocol) of each published port (short or long syntax)."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published") is not None:
                host_ip = port.get("host_ip", "0.0.0.0")
                result.append((host_ip, int(port["published"]), port.get("protocol", "tcp")))
            continue
        spec, _, proto = str(port).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:
            continue  # container port only: nothing published on a fixed host port
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        result.append((host_ip, int(parts[-2]), proto or "tcp"))
    return result


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every panel target of a dashboard."""
    queries = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            where = f"{dashboard['uid']} / {panel.get('title')!r} / {target.get('refId')}"
            queries.append((where, target.get("expr", "")))
    return queries


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    return str(query or variable.get("definition") or "")


def variable_as_expr(variable: dict[str, Any]) -> str:
    """A query variable's `label_values(expr, label)` as a PromQL query with the same data."""
    match = LABEL_VALUES.match(variable_query(variable))
    assert match, f"variable {variable['name']}: expected label_values(expr, label)"
    expr, label = match.groups()
    return f"count by ({label}) ({expr})"


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def panel_by_id(dashboard: dict[str, Any], panel_id: int) -> dict[str, Any]:
    (panel,) = [p for p in iter_panels(dashboard["panels"]) if p.get("id") == panel_id]
    return panel


def editor_query(variable: dict[str, Any]) -> str | None:
    """The query Grafana runs for a variable saved from the Prometheus variable editor.

    For `qryType` 1 (label values) Grafana rebuilds `label_values(metric{filters}, label)`
    from `metric` and `labelFilters` and ignores the `query` string
    (migrateVariableEditorBackToVariableSupport), so a filter written only in `query` is lost.
    """
    query = variable.get("query")
    if not isinstance(query, dict) or query.get("qryType") != 1:
        return None
    filters = ", ".join(
        f'{f["label"]}{f["op"]}"{f["value"]}"' for f in query.get("labelFilters") or []
    )
    selector = query.get("metric", "") + (f"{{{filters}}}" if filters else "")
    return f"label_values({selector}, {query['label']})"


def check_names() -> list[str]:
    """The checks the health engine evaluates for every sync, in its order."""
    now = datetime.now(UTC)
    return [v.name for v in verdicts(SyncView(id="any"), now, Thresholds())]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation, for the variables we know (others stay, like `$1`)."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values.get(name, BUILTINS.get(name, match.group(0)))

    return VARIABLE.sub(replace, expr)


def rule_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every alerting and recording rule in prometheus/alerts.yml, if any."""
    if not ALERTS_FILE.exists():
        return []
    data = yaml.safe_load(ALERTS_FILE.read_text()) or {}
    exprs = []
    for group in data.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            exprs.append((f"alerts.yml / {group.get('name')} / {name}", str(rule["expr"])))
    return exprs


# --- a real Prometheus ------------------------------------------------------------------


class Prometheus:
    """Debian's prometheus binary on a free port with its own config and TSDB in tmp."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=dies_with(os.getpid()),
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                pytest.fail(f"prometheus exited early:\n{self.tail()}", pytrace=False)
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready within 30s:\n{self.tail()}", pytrace=False)
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def query(self, expr: str) -> tuple[str | None, list[Any]]:
        """(error or None, result) of an instant query at now."""
        answer = httpx.post(f"{self.url}/api/v1/query", data={"query": expr}, timeout=30)
        body = answer.json()
        if body.get("status") != "success":
            return f"{body.get('errorType')}: {body.get('error')}", []
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return None, [data["result"]]
        return None, list(data["result"])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """The series of a range query with a 1 s step (what a time-series panel draws)."""
        answer = httpx.post(
            f"{self.url}/api/v1/query_range",
            data={"query": expr, "start": start, "end": end, "step": 1},
            timeout=30,
        )
        body = answer.json()
        assert body.get("status") == "success", f"{body.get('error')}\n    {expr}"
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        error, result = self.query(expr)
        if error or not result:
            return None
        sample = result[0]["value"] if isinstance(result[0], dict) else result[0]
        return float(sample[1])


# --- compose: schema ------------------------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    # The schema says draft-07 as "https://json-schema.org/draft-07/schema" (no "#"), which
    # jsonschema does not recognise, so the draft is named here.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(document: Any) -> list[str]:
    errors = sorted(compose_validator().iter_errors(document), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]


def test_compose_file_matches_the_compose_specification() -> None:
    errors = schema_errors(compose())
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(errors)


def test_the_schema_catches_a_broken_compose_file() -> None:
    """The vendored schema really constrains services (it is not an empty `{}` schema)."""
    broken = {
        "services": {
            "web": {"image": "x", "helthcheck": {"test": ["CMD", "true"]}},
            "db": {"image": "y", "depends_on": {"web": {"condition": "service_sick"}}},
        }
    }
    errors = schema_errors(broken)
    assert any("helthcheck" in e for e in errors), errors
    assert any("service_sick" in e for e in errors), errors


# --- compose: what the schema cannot see -----------------------------------------------------


def test_every_mounted_file_and_build_context_exists_in_the_repository() -> None:
    missing = []
    for name, service in services().items():
        for source, target in bind_mounts(service):
            if not (ROOT / source).resolve().exists():
                missing.append(f"{name}: {source} (mounted at {target})")
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            for path in (context, dockerfile):
                if not path.exists():
                    missing.append(f"{name}: build {path.relative_to(ROOT)}")
    assert not missing, "mounted or built from, but not in the repository:\n" + "\n".join(missing)


def test_every_named_volume_is_declared() -> None:
    declared = set(compose().get("volumes") or {})
    used = {v for s in services().values() for v in named_volumes(s)}
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"


def test_every_service_has_a_healthcheck() -> None:
    lacking = []
    for name, service in services().items():
        check = service.get("healthcheck") or {}
        test = check.get("test")
        if check.get("disable") or not test or test == ["NONE"]:
            lacking.append(name)
    assert not lacking, f"services without a healthcheck: {lacking}"


def test_published_ports_are_unique_and_documented() -> None:
    seen: dict[tuple[int, str], str] = {}
    clashes = []
    for name, service in services().items():
        for _, port, proto in published_ports(service):
            # 127.0.0.1:8000 and 0.0.0.0:8000 clash too, so the host ip is left out.
            if (port, proto) in seen:
                clashes.append(f"{port}/{proto}: {seen[port, proto]} and {name}")
            seen[port, proto] = name
    assert not clashes, "host ports published twice:\n" + "\n".join(clashes)
    section = README.read_text().partition("## Full stack (docker compose)")[2]
    assert section, "README.md lacks the '## Full stack (docker compose)' section"
    undocumented = [
        f"{port} ({name})"
        for (port, _), name in seen.items()
        if not re.search(rf"^\|.*\b{port}\b.*\|", section, re.MULTILINE)
    ]
    assert not undocumented, f"ports missing from the README's ports table: {undocumented}"


def test_compose_wires_the_stack_together() -> None:
    svc = services()
    assert {"kafka", "redis", "syncmon", "simulator", "prometheus", "alertmanager",
            "grafana"} <= set(svc)  # fmt: skip
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = svc["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert svc["syncmon"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    env = svc["syncmon"]["environment"]
    assert env["SYNCMON_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["SYNCMON_REDIS_URL"].startswith("redis://redis:6379")
    assert env["SYNCMON_HTTP_HOST"] == "0.0.0.0"
    assert svc["simulator"]["image"] == svc["syncmon"]["image"]
    assert svc["simulator"]["command"] == [
        "syncmon", "simulate", "--syncs", "200", "--rate", "50"
    ]  # fmt: skip
    mounts = {s: dict(bind_mounts(svc[s])) for s in ("prometheus", "alertmanager", "grafana")}
    assert {"./prometheus/prometheus.yml", "./prometheus/alerts.yml"} <= set(mounts["prometheus"])
    assert "./prometheus/alertmanager.yml" in mounts["alertmanager"]
    assert mounts["grafana"]["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["grafana"]["./grafana/dashboards"] == "/var/lib/grafana/dashboards"
    grafana_env = svc["grafana"]["environment"]
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana_env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_dockerfile_runs_syncmon_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the final USER must not be root"
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    assert re.search(r"SYNCMON_HTTP_HOST=0\.0\.0\.0", text)
    assert re.search(r"^HEALTHCHECK .*urllib.*/healthz", text, re.MULTILINE | re.DOTALL)
    assert re.search(r'^CMD \["syncmon", "run"\]\s*$', text, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# --- Prometheus config ------------------------------------------------------------------------


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """`promtool check config` on the files compose mounts, laid out as in the container."""
    promtool = tool("promtool")
    service = services()["prometheus"]
    mounts = bind_mounts(service)
    missing = [src for src, _ in mounts if not (ROOT / src).exists()]
    assert not missing, (
        f"the prometheus service mounts {missing}, which do not exist yet (prometheus/ is "
        "written separately)"
    )
    config_target = "/etc/prometheus/prometheus.yml"
    for arg in service.get("command", []):
        if str(arg).startswith("--config.file="):
            config_target = str(arg).split("=", 1)[1]
    root = tmp_path / "container"
    for source, target in mounts:
        copy = root / target.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, copy)
        else:
            shutil.copyfile(ROOT / source, copy)
    config = root / config_target.lstrip("/")
    assert config.exists(), f"nothing mounted at --config.file={config_target}"
    # Absolute container paths in the config (rule_files: [/etc/prometheus/alerts.yml]).
    text = config.read_text()
    for _, target in mounts:
        text = text.replace(target, str(root / target.lstrip("/")))
    config.write_text(text)

    done = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"promtool check config failed:\n{done.stdout}{done.stderr}"

    loaded = yaml.safe_load(text) or {}
    rule_files = {
        found.resolve()
        for pattern in loaded.get("rule_files", [])
        for found in config.parent.glob(pattern)
    } | {
        Path(pattern).resolve()
        for pattern in loaded.get("rule_files", [])
        if Path(pattern).is_absolute() and Path(pattern).exists()
    }
    alerts = (root / "etc/prometheus/alerts.yml").resolve()
    assert alerts in rule_files, f"prometheus.yml does not load alerts.yml: {rule_files}"
    targets = json.dumps(
        [job for job in loaded.get("scrape_configs", []) if job.get("job_name") == "syncmon"]
    )
    assert "syncmon:8000" in targets or ('"syncmon"' in targets and "8000" in targets), (
        f"no scrape job `syncmon` for syncmon:8000: {targets}"
    )


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = [s for s in sources["datasources"] if s["type"] == "prometheus"]
    assert source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"] if p["type"] == "file"}
    assert paths == {"/var/lib/grafana/dashboards"}
    assert [p.name for p in DASHBOARDS] == [
        "syncmon-fleet.json", "syncmon-self.json", "syncmon-sync.json"
    ]  # fmt: skip
    uids = [load_dashboard(p)["uid"] for p in DASHBOARDS]
    assert uids == [p.stem for p in DASHBOARDS], "dashboard uid = file name, so links stay stable"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None, "provisioned dashboards carry no database id"
    panels = list(iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    problems = []
    for panel in panels:
        if panel.get("type") == "row":
            continue
        title = panel.get("title")
        if panel.get("datasource", {}).get("uid") != DATASOURCE_UID:
            problems.append(f"{title}: panel datasource {panel.get('datasource')}")
        if not panel.get("targets"):
            problems.append(f"{title}: no targets")
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") != DATASOURCE_UID:
                problems.append(f"{title}/{target.get('refId')}: {target.get('datasource')}")
            expr = target.get("expr", "")
            if not expr.strip():
                problems.append(f"{title}/{target.get('refId')}: empty expr")
            for window in re.findall(r"\[([^\]]+)\]", expr):
                if window != "$__rate_interval":
                    problems.append(f"{title}: range [{window}], use [$__rate_interval]")
            # Per-sync and counter series are exported by every replica from Redis: summing
            # them over instances multiplies by the replica count. Histograms are per process.
            raw_sum = re.search(
                r"\bsum\b(?:\s*by\s*\([^)]*\))?\s*\(\s*(?:(?:i?rate|increase)\s*\(\s*)?"
                r"(syncmon_\w+)",
                expr,
            )
            if raw_sum and not raw_sum.group(1).endswith(("_bucket", "_sum", "_count")):
                problems.append(f"{title}: sum over {raw_sum.group(1)} (use max across replicas)")
            if path.stem == "syncmon-sync" and "$sync_id" not in expr:
                problems.append(f"{title}: the sync dashboard's queries must use $sync_id")
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            if variable.get("datasource", {}).get("uid") != DATASOURCE_UID:
                problems.append(f"variable {variable['name']}: {variable.get('datasource')}")
            variable_as_expr(variable)
    assert not problems, "\n".join(problems)


def test_sync_dashboard_picks_sync_id_among_one_providers_syncs() -> None:
    """100,000 sync ids are too many for one list: `$sync_id` is chained on `$provider`."""
    dashboard = load_dashboard(DASHBOARD_DIR / "syncmon-sync.json")
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["provider", "sync_id"], "the variable a chained one uses comes first"
    provider, sync_id = dashboard["templating"]["list"]
    assert variable_query(provider) == "label_values(syncmon_syncs, provider)"
    assert not provider.get("multi") and not provider.get("includeAll"), (
        "one provider at a time: `All` would list every sync again"
    )
    chained = 'label_values(syncmon_sync_info{provider="$provider"}, sync_id)'
    assert variable_query(sync_id) == chained
    assert editor_query(sync_id) == chained, "Grafana runs the editor's metric and labelFilters"


def test_provider_variables_list_every_provider() -> None:
    """SYNCMON_METRICS_PER_SYNC=unhealthy or none leaves providers without per-sync series:
    the provider lists come from `syncmon_syncs`, which is always exported."""
    found = []
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        if "provider" not in variables(dashboard):
            continue
        variable = variables(dashboard)["provider"]
        found.append(path.stem)
        metric = re.match(r"\w+", LABEL_VALUES.match(variable_query(variable)).group(1))  # type: ignore[union-attr]
        assert metric is not None and metric.group(0) not in PER_SYNC_METRICS, (
            f"{path.stem}: $provider comes from a per-sync family: {variable_query(variable)}"
        )
        assert variable_query(variable) == "label_values(syncmon_syncs, provider)"
    assert found == ["syncmon-fleet", "syncmon-sync"]


def test_variable_editor_models_run_the_query_they_show() -> None:
    problems = []
    for path in DASHBOARDS:
        for variable in load_dashboard(path)["templating"]["list"]:
            built = editor_query(variable)
            query = variable_query(variable)
            if built is not None and re.sub(r"\s", "", built) != re.sub(r"\s", "", query):
                problems.append(f"{path.stem} / {variable['name']}: runs {built}, shows {query}")
            if variable.get("definition") not in (None, query):
                problems.append(f"{path.stem} / {variable['name']}: definition differs")
    assert not problems, "\n".join(problems)


def urls(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "url" and isinstance(value, str):
                yield value
            else:
                yield from urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from urls(item)


def test_links_between_dashboards_set_the_variables_they_need() -> None:
    """A link to a dashboard sets each of its variables that has no `All`, from fields the
    panel has; else Grafana opens it on the first provider with a sync from another one."""
    targets = {load_dashboard(p)["uid"]: load_dashboard(p) for p in DASHBOARDS}
    problems = []
    checked = 0
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        for panel in iter_panels(dashboard["panels"]):
            organize = [t for t in panel.get("transformations", []) if t["id"] == "organize"]
            fields = set(organize[0]["options"].get("indexByName", {})) if organize else None
            for url in urls(panel):
                link = re.match(r"^/d/([\w-]+)/[\w-]*\?(.*)$", url)
                if link is None:
                    continue
                checked += 1
                where = f"{path.stem} / {panel.get('title')!r}: {url}"
                target = targets.get(link.group(1))
                if target is None:
                    problems.append(f"{where}: no dashboard {link.group(1)}")
                    continue
                params = dict(p.split("=", 1) for p in link.group(2).split("&") if "=" in p)
                given = {k.removeprefix("var-"): v for k, v in params.items() if k[:4] == "var-"}
                needed = {
                    v["name"]
                    for v in target["templating"]["list"]
                    if v.get("type") == "query" and not v.get("includeAll")
                }
                if needed - set(given) or set(given) - set(variables(target)):
                    problems.append(f"{where}: sets {sorted(given)}, needs {sorted(needed)}")
                for value in given.values():
                    field = re.fullmatch(r"\$\{__data\.fields\.(\w+)\}", value)
                    if field and fields is not None and field.group(1) not in fields:
                        problems.append(f"{where}: no field {field.group(1)} in {sorted(fields)}")
    assert checked, "no links between dashboards found"
    assert not problems, "\n".join(problems)


def test_checks_over_time_has_a_healthy_row_for_every_check() -> None:
    """syncmon exports `syncmon_sync_check_status` only for checks that are not healthy, so
    the panel makes each check's healthy row from the sync's own `syncmon_sync_info`."""
    dashboard = load_dashboard(DASHBOARD_DIR / "syncmon-sync.json")
    panel = panel_by_id(dashboard, 11)
    assert panel["title"] == "Checks over time"
    (target,) = panel["targets"]
    expr = target["expr"]
    assert 'status="healthy"' not in expr, "the exporter never emits a healthy check series"
    healthy = re.findall(r'"check",\s*"(\w+)",\s*"",\s*""', expr)
    assert healthy == check_names(), f"healthy rows for {healthy}, the engine has {check_names()}"
    assert "syncmon_sync_info" in expr


def all_dashboard_queries() -> list[tuple[str, str, dict[str, Any]]]:
    """(where, expr, dashboard) of every target and query variable of every dashboard."""
    queries = []
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        queries += [(w, e, dashboard) for w, e in dashboard_queries(dashboard)]
        queries += [
            (f"{dashboard['uid']} / variable {v['name']}", variable_as_expr(v), dashboard)
            for v in dashboard["templating"]["list"]
            if v.get("type") == "query"
        ]
    return queries


def test_every_dashboard_and_rule_query_parses(tmp_path: Path) -> None:
    """Syntax of every expression, on an empty Prometheus (no server needed beyond it)."""
    placeholders = {"sync_id": "sync-that-does-not-exist", "provider": ".*", "instance": ".*"}
    exprs = [(w, substitute(e, placeholders)) for w, e, _ in all_dashboard_queries()]
    exprs += rule_exprs()
    with Prometheus(tmp_path, {"global": {"scrape_interval": "15s"}}) as prom:
        invalid = [f"{w}: {err}\n    {e}" for w, e in exprs if (err := prom.query(e)[0])]
    assert not invalid, "invalid PromQL:\n" + "\n".join(invalid)
    leftover = [(w, e) for w, e in exprs if re.search(r"\$(?!1\b)\w", e)]
    assert not leftover, f"unsubstituted variables: {leftover}"


# --- live: syncmon + simulator + Prometheus -----------------------------------------------


def wait_for(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def variable_choices(
    prom: Prometheus, dashboard: dict[str, Any], limit: int = 40
) -> list[dict[str, str]]:
    """Values to try for a dashboard's variables, in their order: `All` where allowed, else
    each real value (of a chained variable, for each value of those before it)."""
    choices: list[dict[str, str]] = [{}]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        name = variable["name"]
        if variable.get("includeAll") and variable.get("allValue"):
            choices = [{**chosen, name: variable["allValue"]} for chosen in choices]
            continue
        label = LABEL_VALUES.match(variable_query(variable)).group(2)  # type: ignore[union-attr]
        expanded = []
        for chosen in choices:
            _, result = prom.query(substitute(variable_as_expr(variable), chosen))
            values = sorted(r["metric"][label] for r in result if label in r["metric"])
            expanded += [{**chosen, name: value} for value in values]
        choices = expanded[:limit]
    return choices


def phantom_columns(
    prom: Prometheus, dashboard: dict[str, Any], values: dict[str, str]
) -> list[str]:
    """Columns a table panel declares (organize, byName overrides) that its query never gives.

    An instant table query gives Time, each label of the result, and Value. Panels with other
    transformations than `organize` (which make columns of their own) and empty results are
    left out.
    """
    problems = []
    for panel in iter_panels(dashboard["panels"]):
        transformations = panel.get("transformations", [])
        if (
            panel.get("type") != "table"
            or [t["id"] for t in transformations] != ["organize"]
            or len(panel["targets"]) != 1
        ):
            continue
        error, result = prom.query(substitute(panel["targets"][0]["expr"], values))
        if error or not result:
            continue  # reported as invalid or empty by run_dashboard
        given = {"Time", "Value"} | {label for r in result for label in r["metric"]}
        options = transformations[0]["options"]
        renamed = options.get("renameByName", {})
        declared = set(options.get("indexByName", {})) | set(renamed)
        declared |= set(options.get("excludeByName", {}))
        shown = {renamed.get(c, c) for c in given}
        overridden = {
            o["matcher"]["options"]
            for o in panel.get("fieldConfig", {}).get("overrides", [])
            if o["matcher"]["id"] == "byName"
        }
        where = f"{dashboard['uid']} / {panel.get('title')!r}"
        problems += [
            f"{where}: declares column {c!r}; the query gives {sorted(given)}"
            for c in sorted(declared - given)
        ]
        problems += [
            f"{where}: override for column {c!r}; the table shows {sorted(shown)}"
            for c in sorted(overridden - shown)
        ]
    return problems


def run_dashboard(
    prom: Prometheus, dashboard: dict[str, Any], values: dict[str, str]
) -> tuple[list[str], list[str]]:
    """(invalid, empty) queries of one dashboard with these variable values."""
    invalid, empty = [], []
    exprs = dashboard_queries(dashboard) + [
        (f"{dashboard['uid']} / variable {v['name']}", variable_as_expr(v))
        for v in dashboard["templating"]["list"]
        if v.get("type") == "query"
    ]
    for where, expr in exprs:
        query = substitute(expr, values)
        error, result = prom.query(query)
        if error:
            invalid.append(f"{where}: {error}\n    {query}")
        elif not result:
            empty.append(f"{where}\n    {query}")
    return invalid, empty


def test_dashboard_and_rule_queries_on_a_live_syncmon(
    topics: Any, redis_url: str, tmp_path: Path
) -> None:
    http_port = free_port()
    env = {
        **os.environ,
        "SYNCMON_KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap,
        "SYNCMON_KAFKA_TOPIC": topics.lifecycle,
        "SYNCMON_KAFKA_DLQ_TOPIC": topics.dlq,
        "SYNCMON_HEALTH_TOPIC": f"{topics.lifecycle}.health",
        "SYNCMON_KAFKA_GROUP_ID": f"deploy-{topics.lifecycle}",
        "SYNCMON_KAFKA_TOPIC_PARTITIONS": str(topics.partitions),
        "SYNCMON_REDIS_URL": redis_url,
        "SYNCMON_HTTP_HOST": "127.0.0.1",
        "SYNCMON_HTTP_PORT": str(http_port),
        "SYNCMON_RETRY_MAX_SECONDS": "1",
    }
    url = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "syncmon.log"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "syncmon", "static_configs": [{"targets": [f"127.0.0.1:{http_port}"]}]}
        ],
    }
    with log.open("wb") as out:
        syncmon = subprocess.Popen(
            [*SYNCMON, "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=dies_with(os.getpid()),
        )

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def tail() -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-15:])

    try:
        assert wait_for(ready, 60), f"syncmon not ready within 60s:\n{tail()}"
        with Prometheus(tmp_path / "prometheus", config) as prom:
            # The simulator replays 5 minutes of history at once, then produces in real
            # time: --duration bounds the run, whichever of the two limits comes first.
            sent = subprocess.run(
                [*SYNCMON, "simulate", "--bootstrap", topics.bootstrap, "--topic",
                 topics.lifecycle, "--syncs", "30", "--rate", "200", "--max-events", "1500",
                 "--duration", "20", "--seed", "1", "--no-create-topic"],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr[-2000:]
            match = re.search(r"sent (\d+) events", sent.stdout)
            assert match, sent.stdout
            count = int(match.group(1))
            notes = [f"simulator sent {count} events"]
            metrics = httpx.get(f"{url}/metrics", timeout=10)
            notes.append(f"syncmon GET /metrics answered {metrics.status_code}")
            if metrics.status_code == 200:
                total = "sum(max by (type, outcome) (syncmon_events_total))"
                consumed = wait_for(lambda: (prom.value(total) or 0) >= count, 90)
                notes.append(f"syncmon_events_total: {prom.value(total)} (all: {consumed})")
                time.sleep(3)  # a few more scrapes: health ticks after the last batch
            # A few scrapes after the last event, so rate() has points and the state is final.
            scraped = wait_for(
                lambda: (prom.value('count_over_time(up{job="syncmon"}[1m])') or 0) >= 8, 30
            )
            notes.append(f"scraped 8+ times: {scraped}; up={prom.value('up')}")

            invalid: list[str] = []
            empty: list[str] = []
            phantom: list[str] = []
            ran = 0
            for path in DASHBOARDS:
                dashboard = load_dashboard(path)
                choices = variable_choices(prom, dashboard)
                best: tuple[list[str], list[str], dict[str, str]] | None = None
                for values in choices or [{}]:
                    bad, none = run_dashboard(prom, dashboard, values)
                    if best is None or len(bad) + len(none) < len(best[0]) + len(best[1]):
                        best = (bad, none, values)
                    if not bad and not none:
                        break
                assert best is not None
                invalid += best[0]
                empty += best[1]
                phantom += phantom_columns(prom, dashboard, best[2])
                ran += len(dashboard_queries(dashboard))
                notes.append(f"{dashboard['uid']}: variables {best[2]}")
            for where, expr in rule_exprs():
                error, _ = prom.query(expr)
                if error:
                    invalid.append(f"{where}: {error}\n    {expr}")
            rules = len(rule_exprs())
            notes.append(
                f"{ran} dashboard queries, {rules} rule expressions"
                + ("" if ALERTS_FILE.exists() else " (prometheus/alerts.yml not present)")
            )
    finally:
        syncmon.send_signal(signal.SIGTERM)
        try:
            syncmon.wait(timeout=40)
        except subprocess.TimeoutExpired:
            syncmon.kill()
            syncmon.wait(timeout=5)

    report = "\n".join(notes)
    print(report)
    problems = []
    if invalid:
        problems.append(f"{len(invalid)} invalid queries:\n" + "\n".join(invalid))
    if empty:
        problems.append(f"{len(empty)} dashboard queries returned no data:\n" + "\n".join(empty))
    if phantom:
        problems.append("table columns no query gives:\n" + "\n".join(phantom))
    assert not problems, report + "\n\n" + "\n\n".join(problems)


# --- written history: a scrape target serving what the test says -------------------------


class Exposition:
    """An HTTP scrape target whose /metrics text the test sets (and changes) at will."""

    def __init__(self) -> None:
        self.body = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = outer.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Exposition:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# Providers: p1 and p2 have per-sync series; p3's syncs are all left out (as with
# SYNCMON_METRICS_PER_SYNC=unhealthy and a healthy p3), so only syncmon_syncs names it.
HISTORY_SYNCS = {"calm": "p1", "flaky": "p1", **{f"s{i:02}": "p2" for i in range(12)}}


def history_exposition(flaky_failing: bool, success: dict[str, float]) -> str:
    """syncmon's exposition for HISTORY_SYNCS: `flaky` has its freshness check in error or
    (recovered) no check series at all, like `calm` always; `success` gives last successes."""
    lines = []
    for provider, syncs in (("p1", 2), ("p2", 12), ("p3", 5)):
        for status in ("healthy", "initializing", "warn", "error", "paused"):
            count = syncs if status == "healthy" else 0
            if provider == "p1" and flaky_failing:
                count = {"healthy": 1, "error": 1}.get(status, 0)
            lines.append(f'syncmon_syncs{{provider="{provider}",health="{status}"}} {count}')
    for sync_id, provider in HISTORY_SYNCS.items():
        base = f'sync_id="{sync_id}",provider="{provider}"'
        lines.append(
            f'syncmon_sync_info{{{base},org_id="org-1",name="sync {sync_id}",'
            'sync_frequency="continuous"} 1'
        )
        health = "error" if sync_id == "flaky" and flaky_failing else "healthy"
        for status in ("healthy", "initializing", "warn", "error", "paused"):
            state = int(status == health)
            lines.append(f'syncmon_sync_health_status{{{base},status="{status}"}} {state}')
        if sync_id in success:
            lines.append(
                f"syncmon_sync_last_success_timestamp_seconds{{{base}}} {success[sync_id]}"
            )
    if flaky_failing:
        lines.append(
            'syncmon_sync_check_status{sync_id="flaky",provider="p1",check="freshness",'
            'status="error"} 1'
        )
    return "\n".join(lines) + "\n"


def test_dashboard_panels_over_a_written_history(tmp_path: Path) -> None:
    """Phase 1: `flaky`'s freshness check fails; s00 to s09 are the ten stalest syncs.
    Phase 2: `flaky` recovered (no check series), s00 and s01 succeeded just now.
    Checks over time must show every check of `calm` healthy throughout, and `flaky`'s
    freshness error then healthy without a gap; the stalest-syncs panel must draw the ten
    stalest at the end of the range, not the union of each step's ten."""
    sync_dashboard = load_dashboard(DASHBOARD_DIR / "syncmon-sync.json")
    fleet = load_dashboard(DASHBOARD_DIR / "syncmon-fleet.json")
    now = time.time()
    success = {f"s{i:02}": now - 10_000 + 100 * i for i in range(12)}
    success |= {"calm": now - 60, "flaky": now - 60}
    with Exposition() as target:
        target.body = history_exposition(True, success)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "syncmon", "static_configs": [{"targets": [target.target]}]}
            ],
        }
        with Prometheus(tmp_path, config) as prom:
            assert wait_for(lambda: prom.value('up{job="syncmon"}') == 1, 30), prom.tail()
            start = time.time()
            assert wait_for(lambda: (prom.value("count_over_time(up[1m])") or 0) >= 4, 30)
            fresh = round(time.time(), 3)
            target.body = history_exposition(False, success | {"s00": fresh, "s01": fresh})
            newest = 'syncmon_sync_last_success_timestamp_seconds{sync_id="s00"}'
            assert wait_for(
                lambda: (
                    prom.value("count(syncmon_sync_check_status)") is None
                    and prom.value(newest) == fresh
                ),
                30,
            )
            time.sleep(3)  # a few scrapes of phase 2
            end = time.time()

            # 1. Checks over time: a check without a series is healthy while the sync exists.
            checks = panel_by_id(sync_dashboard, 11)["targets"][0]["expr"]
            rows = {}
            for sync_id in ("calm", "flaky"):
                result = prom.query_range(substitute(checks, {"sync_id": sync_id}), start, end)
                rows[sync_id] = {
                    r["metric"].get("check"): [v for _, v in r["values"]] for r in result
                }
                assert sorted(rows[sync_id]) == sorted(check_names()), (sync_id, result)
            steps = len(rows["calm"]["freshness"])
            assert steps >= 6
            for sync_id, by_check in rows.items():
                for check, values in by_check.items():
                    assert len(values) == steps, f"{sync_id}/{check} has gaps: {values}"
                    if (sync_id, check) != ("flaky", "freshness"):
                        assert set(values) == {"0"}, f"{sync_id}/{check}: {values}"
            freshness = rows["flaky"]["freshness"]
            assert freshness[0] == "3" and freshness[-1] == "0", freshness
            assert set(freshness) == {"3", "0"}, freshness

            # 5. Stalest syncs: the ten stalest at the end of the range, and only them.
            stalest = panel_by_id(fleet, 15)["targets"][0]["expr"]
            result = prom.query_range(substitute(stalest, {"provider": ".*"}), start, end)
            shown = sorted(r["metric"]["sync_id"] for r in result)
            assert shown == [f"s{i:02}" for i in range(2, 12)], shown

            # 3. The fleet's provider list has p3, whose syncs have no per-sync series.
            _, result = prom.query(variable_as_expr(variables(fleet)["provider"]))
            assert sorted(r["metric"]["provider"] for r in result) == ["p1", "p2", "p3"]

            # 4. The sync dashboard lists one provider's syncs.
            sync_ids = variable_as_expr(variables(sync_dashboard)["sync_id"])
            _, result = prom.query(substitute(sync_ids, {"provider": "p1"}))
            assert sorted(r["metric"]["sync_id"] for r in result) == ["calm", "flaky"]

            # 2. Table columns are the ones the queries give.
            phantom = phantom_columns(prom, fleet, {"provider": ".*"})
            phantom += phantom_columns(prom, sync_dashboard, {"provider": "p1", "sync_id": "calm"})
            assert not phantom, "\n".join(phantom)
