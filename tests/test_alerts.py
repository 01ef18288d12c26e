"""Prometheus rules and Alertmanager configuration (prometheus/, docs/runbook.md).

Runs the real tools: `promtool` (Debian package `prometheus`) and `amtool` plus the
Alertmanager binary (package `prometheus-alertmanager`). A missing tool fails the test with
the package to install; it never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.services import dies_with

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "prometheus"
ALERTS = PROM / "alerts.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
PROM_CONFIG = PROM / "prometheus.yml"
AM_CONFIG = PROM / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/example/syncmon/blob/main/docs/runbook.md#"

PACKAGES = {
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


def tool(*names: str) -> str:
    """The path of the first of `names` on PATH; fails (never skips) naming the apt package."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    package = PACKAGES[names[0]]
    pytest.fail(
        f"{' / '.join(names)} not found on PATH: install the Debian package {package} "
        f"(`apt-get install -y {package}`, or run `bash scripts/setup.sh`)",
        pytrace=False,
    )


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing its output."""
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, else fail with the command line and everything it printed."""
    command = " ".join(str(a) for a in proc.args)
    assert proc.returncode == 0, (
        f"$ {command}\nexit status {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- what the rule file declares (parsed with regular expressions: no YAML library here) ---


def declared_alerts() -> dict[str, dict[str, str]]:
    """alert name -> {"severity": ..., "runbook_url": ...} as written in alerts.yml."""
    alerts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in ALERTS.read_text().splitlines():
        if m := re.match(r"\s*- alert:\s*(\S+)\s*$", line):
            current = alerts.setdefault(m[1], {})
        elif re.match(r"\s*- (record|name):", line):
            current = None
        elif current is not None and (m := re.match(r"\s*(severity|runbook_url):\s*(\S+)", line)):
            current[m[1]] = m[2]
    return alerts


ALERT_NAMES = sorted(declared_alerts())
EXPECTED_ALERTS = {
    "SyncmonSyncError",
    "SyncmonSyncWarnTooLong",
    "SyncmonCredentialFailed",
    "SyncmonBackfillStalled",
    "SyncmonSyncStale",
    "SyncmonProviderDegraded",
    "SyncmonDeadLettersGrowing",
    "SyncmonConsumerLagHigh",
    "SyncmonDown",
    "SyncmonAbsent",
    "SyncmonNotConnected",
}


# --- promtool --------------------------------------------------------------------------------


def test_rules_are_valid() -> None:
    assert_ok(run(tool("promtool"), "check", "rules", rel(ALERTS)))


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in prometheus/tests/*.yml"
    assert_ok(run(tool("promtool"), "test", "rules", *(rel(p) for p in RULE_TESTS)))


def test_prometheus_config_is_valid() -> None:
    """Also checks that rule_files (alerts.yml, relative to the config) exist and are valid."""
    proc = run(tool("promtool"), "check", "config", rel(PROM_CONFIG))
    assert_ok(proc)
    assert "1 rule files found" in proc.stdout, proc.stdout


def test_alerts_are_complete() -> None:
    """Every alert asked for exists, has a known severity and a runbook section."""
    alerts = declared_alerts()
    assert set(alerts) == EXPECTED_ALERTS
    runbook_sections = set(re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), re.MULTILINE))
    for name, fields in alerts.items():
        assert fields.get("severity") in {"page", "ticket"}, (name, fields)
        assert fields.get("runbook_url") == RUNBOOK_URL + name.lower(), (name, fields)
        assert name in runbook_sections, f"docs/runbook.md has no '## {name}' section"


def test_every_alert_has_unit_tests() -> None:
    """Each alert has a promtool test where it fires and one where it must not."""
    text = "\n".join(p.read_text() for p in RULE_TESTS)
    fires = set(re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*\n\s*- exp_labels:", text))
    quiet = set(re.findall(r"alertname:\s*(\w+)\s*,?\s*\n?\s*exp_alerts:\s*\[\]", text))
    assert set(ALERT_NAMES) - fires == set(), "alerts never expected to fire"
    assert set(ALERT_NAMES) - quiet == set(), "alerts never expected to stay quiet"


# --- amtool ----------------------------------------------------------------------------------


def test_alertmanager_config_is_valid() -> None:
    proc = run(tool("amtool"), "check-config", rel(AM_CONFIG))
    assert_ok(proc)
    assert "1 inhibit rules" in proc.stdout and "2 receivers" in proc.stdout, proc.stdout


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_each_alert_routes_to_its_severity_receiver(alert: str) -> None:
    severity = declared_alerts()[alert]["severity"]
    labels = [f"alertname={alert}", f"severity={severity}", "provider=hubspot", "org_id=o1"]
    assert_ok(
        run(
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={rel(AM_CONFIG)}",
            f"--verify.receivers={severity}",
            *labels,
        )
    )


def test_alert_without_severity_becomes_a_ticket() -> None:
    assert_ok(
        run(
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={rel(AM_CONFIG)}",
            "--verify.receivers=ticket",
            "alertname=Something",
        )
    )


# --- a real Alertmanager: inhibition and grouping ----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """An Alertmanager running prometheus/alertmanager.yml on a free port; yields its URL."""
    binary = tool("alertmanager", "prometheus-alertmanager")
    url = f"http://127.0.0.1:{free_port()}"
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={AM_CONFIG}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--cluster.listen-address=",  # no HA gossip
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=dies_with(os.getpid()),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = (tmp_path / "alertmanager.log").read_text()
                pytest.fail(f"Alertmanager did not become ready:\n{output}", pytrace=False)
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_provider_degraded_inhibits_that_providers_sync_alerts(alertmanager: str) -> None:
    amtool = tool("amtool")
    url = f"--alertmanager.url={alertmanager}"
    sent = [
        "alertname=SyncmonProviderDegraded provider=hubspot severity=page",
        "alertname=SyncmonSyncError provider=hubspot sync_id=s1 org_id=o1 severity=page",
        "alertname=SyncmonSyncError provider=hubspot sync_id=s2 org_id=o1 severity=page",
        "alertname=SyncmonSyncWarnTooLong provider=hubspot sync_id=s3 org_id=o2 severity=ticket",
        "alertname=SyncmonSyncStale provider=hubspot sync_id=s4 org_id=o2 severity=ticket",
        "alertname=SyncmonBackfillStalled provider=hubspot sync_id=s6 org_id=o2 severity=ticket",
        # Not a target of the inhibition (a rejected credential is not the provider's problem)
        # or of another provider: stay active.
        "alertname=SyncmonCredentialFailed provider=hubspot sync_id=s1 org_id=o1 severity=ticket",
        "alertname=SyncmonSyncError provider=jira sync_id=s5 org_id=o1 severity=page",
    ]
    for labels in sent:
        assert_ok(run(amtool, url, "alert", "add", *labels.split()))

    expected = {
        ("SyncmonProviderDegraded", ""): "active",
        ("SyncmonSyncError", "s1"): "suppressed",
        ("SyncmonSyncError", "s2"): "suppressed",
        ("SyncmonSyncWarnTooLong", "s3"): "suppressed",
        ("SyncmonSyncStale", "s4"): "suppressed",
        ("SyncmonBackfillStalled", "s6"): "suppressed",
        ("SyncmonCredentialFailed", "s1"): "active",
        ("SyncmonSyncError", "s5"): "active",
    }
    deadline = time.monotonic() + 15
    while True:  # the inhibitor sees new source alerts asynchronously
        proc = run(amtool, url, "-o", "json", "alert", "query", "--active", "--inhibited")
        assert_ok(proc)
        states = {
            (a["labels"]["alertname"], a["labels"].get("sync_id", "")): a["status"]["state"]
            for a in json.loads(proc.stdout)
        }
        if states == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert states == expected

    # Grouping: by alertname, provider and org_id; the receiver named after the severity.
    with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts/groups", timeout=5) as response:
        groups = json.load(response)
    got = {
        (
            tuple(sorted(g["labels"].items())),
            g["receiver"]["name"],
            tuple(sorted(a["labels"].get("sync_id", "") for a in g["alerts"])),
        )
        for g in groups
    }
    hubspot_errors = (
        (("alertname", "SyncmonSyncError"), ("org_id", "o1"), ("provider", "hubspot")),
        "page",
        ("s1", "s2"),
    )
    degraded = (
        (("alertname", "SyncmonProviderDegraded"), ("provider", "hubspot")),
        "page",
        ("",),
    )
    credential = (
        (("alertname", "SyncmonCredentialFailed"), ("org_id", "o1"), ("provider", "hubspot")),
        "ticket",
        ("s1",),
    )
    assert {hubspot_errors, degraded, credential} <= got, groups
