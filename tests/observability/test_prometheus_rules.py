"""prometheus/: config and rule syntax (promtool), rule unit tests, and rule hygiene.

Hygiene = every alert carries severity/summary/description/runbook_url, its runbook_url is the one base
(RUNBOOK_BASE_URL) followed by the path of its own runbook in docs/runbooks/, every alert is covered by
promtool unit tests both firing and (except Watchdog) staying silent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import REPO_ROOT
from harness.observability import (
    BLACKBOX_CONFIG,
    BLACKBOX_EXPORTER_BIN,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    RULES_DIR,
    load_yaml,
)
from harness.tools import find_tool

PROMTOOL = "/usr/bin/promtool"
# Every runbook_url starts with the one setting (RUNBOOK_BASE_URL, an external label: compose/monitoring.yaml);
# the rest is the runbook's path in the repository.
RUNBOOK_BASE = "{{ $externalLabels.runbook_base_url }}/"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks"
SEVERITIES = {"critical", "warning", "info"}
# Job names are a contract with the compose files and the dashboards.
JOBS = {
    "tally-app",
    "traefik",
    "postgres",
    "node",
    "cadvisor",
    "blackbox-https",
    "alertmanager",
    "prometheus",
}
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    find_tool(PROMTOOL)
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def alerting_rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            rules += [rule | {"_file": path.name} for rule in group["rules"] if "alert" in rule]
    return rules


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alerting_rules()}


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # rule_files is a glob relative to the config: make sure it really found our files.
    assert f"{len(list(RULES_DIR.glob('*.yml')))} rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_promtool_rule_unit_tests() -> None:
    assert TEST_FILES
    result = promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_scrape_jobs_match_the_contract() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert sorted(jobs) == sorted(JOBS)
    app = next(job for job in config["scrape_configs"] if job["job_name"] == "tally-app")
    # Every replica individually, found by DNS, on the metrics port (never through Traefik).
    assert app["dns_sd_configs"] == [{"names": ["app"], "type": "A", "port": 9200, "refresh_interval": "15s"}]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["rule_files"] == ["rules/*.yml"]


def test_blackbox_module_used_by_prometheus_exists_and_config_is_valid() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "blackbox-https")
    modules = load_yaml(BLACKBOX_CONFIG)["modules"]
    for module in job["params"]["module"]:
        assert module in modules
    assert {"https_2xx_selfsigned", "https_2xx"} <= set(modules)
    assert modules["https_2xx"]["http"]["tls_config"]["insecure_skip_verify"] is False
    result = subprocess.run(
        [find_tool(BLACKBOX_EXPORTER_BIN), "--config.check", f"--config.file={BLACKBOX_CONFIG}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: f"{r['alert']}-{r['labels'].get('severity')}")
def test_alert_has_severity_annotations_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"].get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{rule['alert']} lacks {key}"
    url = annotations["runbook_url"]
    assert url.startswith(RUNBOOK_BASE), f"{rule['alert']}: runbook_url must start with {RUNBOOK_BASE}"
    runbook = REPO_ROOT / url.removeprefix(RUNBOOK_BASE)
    assert runbook.is_file(), f"{rule['alert']}: runbook_url names no file: {url}"
    assert runbook == RUNBOOKS / f"{rule['alert']}.md", f"{rule['alert']}: runbook_url is not its own runbook"
    text = runbook.read_text()
    assert text.startswith(f"# {rule['alert']}\n")
    for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
        assert section in text, f"{runbook.name} lacks {section}"


def test_no_orphan_runbooks() -> None:
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == alert_names()


def test_alert_names_are_unique_per_severity() -> None:
    seen = [(rule["alert"], rule["labels"]["severity"]) for rule in alerting_rules()]
    assert len(seen) == len(set(seen))


def unit_test_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for path in TEST_FILES:
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.append((path.name, case))
    return cases


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    """Every (alert, severity) must fire in some promtool test, and every alert must be shown
    silent in some case too: a rule that always fires would otherwise pass."""
    fired: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for _, case in unit_test_cases():
        expected = case.get("exp_alerts") or []
        if not expected:
            silent.add(case["alertname"])
        for alert in expected:
            fired.add((case["alertname"], alert["exp_labels"]["severity"]))
    wanted = {(rule["alert"], rule["labels"]["severity"]) for rule in alerting_rules()}
    assert wanted - fired == set(), "alerts never shown firing in prometheus/tests"
    # Watchdog is the one alert that must never be silent.
    assert alert_names() - {"Watchdog"} - silent == set(), "alerts never shown silent in prometheus/tests"
    unknown = ({name for name, _ in fired} | silent) - alert_names()
    assert unknown == set(), "prometheus/tests name alerts that no rule defines"


def test_docs_alert_table_lists_every_alert() -> None:
    doc = (REPO_ROOT / "docs" / "observability.md").read_text()
    for name in alert_names():
        assert f"[{name}](runbooks/{name}.md)" in doc, f"docs/observability.md does not list {name}"


def test_rule_files_are_the_only_yaml_in_rules_dir() -> None:
    # rules/*.yml is globbed by Prometheus: a stray YAML file there would be loaded as rules.
    for path in Path(RULES_DIR).iterdir():
        assert path.suffix == ".yml" and "groups" in load_yaml(path), path
