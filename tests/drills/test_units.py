"""Fast checks of the drill machinery: the native Traefik's configuration, the counting rule, the bad-input
corpus, and the compose commands operators run (they cannot run here: no Docker engine)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from app.identity import normalise_address
from drills import badinput, compose, native, scenarios
from drills.report import DrillResult, Ledger, dump
from drills.run import main
from harness import REPO_ROOT, traefik


def app_labels() -> dict[str, str]:
    return yaml.safe_load((REPO_ROOT / "compose" / "app.yaml").read_text())["services"]["app"]["labels"]


def test_native_traefik_runs_the_stack_config_with_only_the_rate_limit_raised(tmp_path: Path) -> None:
    labels = app_labels()
    traefik.write_dynamic_dir(tmp_path, labels, ["http://127.0.0.1:9001"], native.RATE_LIMIT_OVERRIDE)
    dynamic = REPO_ROOT / "traefik" / "dynamic"
    for path in dynamic.glob("*.yml"):
        if path.name != "middlewares.yml":
            assert (tmp_path / path.name).resolve() == path.resolve()
    ours = yaml.safe_load((dynamic / "middlewares.yml").read_text())["http"]["middlewares"]
    native_copy = yaml.safe_load((tmp_path / "middlewares.yml").read_text())["http"]["middlewares"]
    assert {name: spec for name, spec in native_copy.items() if name != "rate-limit"} == {
        name: spec for name, spec in ours.items() if name != "rate-limit"
    }
    raised = native_copy["rate-limit"]["rateLimit"]
    assert raised["average"] > ours["rate-limit"]["rateLimit"]["average"]
    assert raised["sourceCriterion"] == ours["rate-limit"]["rateLimit"]["sourceCriterion"]
    app = yaml.safe_load((tmp_path / "zz-native-app.yml").read_text())["http"]
    assert app["routers"]["tally"]["middlewares"] == [labels["traefik.http.routers.tally.middlewares"]]
    assert app["services"]["tally"]["loadbalancer"]["servers"] == [{"url": "http://127.0.0.1:9001"}]


def test_an_override_of_a_middleware_the_stack_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no middleware"):
        traefik.write_dynamic_dir(tmp_path, app_labels(), [], {"no-such-limit": {"rateLimit": {"average": 1}}})


def test_the_drills_wait_as_long_as_the_labels_health_check_needs() -> None:
    label = "traefik.http.services.tally.loadbalancer.healthcheck."
    labels = app_labels()
    interval = traefik.go_duration_s(labels[label + "interval"])
    unhealthy = traefik.go_duration_s(labels.get(label + "unhealthyinterval", labels[label + "interval"]))
    expected = max(interval, unhealthy) + traefik.go_duration_s(labels[label + "timeout"])
    assert traefik.health_check_bound_s() == expected > 0


def test_go_durations() -> None:
    assert traefik.go_duration_s("5s") == 5
    assert traefik.go_duration_s("250ms") == 0.25
    assert traefik.go_duration_s("1m30s") == 90
    with pytest.raises(ValueError, match="Go duration"):
        traefik.go_duration_s("5 seconds")


@pytest.mark.parametrize(
    ("ledger", "violations"),
    [
        (Ledger(ok=100, failed=0, retried=0, db_delta=100), []),
        (Ledger(ok=100, failed=0, retried=0, db_delta=99), ["lost-counts"]),
        (Ledger(ok=100, failed=0, retried=0, db_delta=101), ["unexplained-counts"]),
        # A reset connection or a retried request may have been counted: tolerated up to their number.
        (Ledger(ok=100, failed=2, retried=1, db_delta=103), []),
        (Ledger(ok=100, failed=2, retried=1, db_delta=104), ["unexplained-counts"]),
        (Ledger(ok=100, failed=5, retried=0, db_delta=99), ["lost-counts"]),
    ],
)
def test_counting_rule(ledger: Ledger, violations: list[str]) -> None:
    assert [v.split(":", 1)[0] for v in ledger.violations()] == violations


def test_a_missed_timing_target_is_reported_but_does_not_fail_the_drill() -> None:
    result = DrillResult("db-restart", "native", "short")
    result.timing(True, "hang", "met")
    result.timing(False, "app-recovery", "the app answered 7.5s after the database was back (target 5.0s)")
    assert result.passed and result.violations == []
    assert "SLOWER THAN TARGET (reported, not a failure): app-recovery: the app answered 7.5s" in result.text()
    assert '"slower_than_target": [\n      "app-recovery:' in dump([result])
    result.check(False, "status", "statuses other than 200/503: [500]")
    assert not result.passed


def test_forged_address_spellings_collapse_to_the_canonical_visitors() -> None:
    # The bound on visitors added by the direct bad-input phase rests on this.
    assert {normalise_address(value) for value in badinput.VALID_SPELLINGS} == set(badinput.CANONICAL)
    assert {normalise_address(value) for value in badinput.INVALID_SPELLINGS} == {None}


def test_bad_input_corpus_is_deterministic_and_covers_every_category() -> None:
    first, again = badinput.corpus(500, seed="x"), badinput.corpus(500, seed="x")
    assert [c.data for c in first] == [c.data for c in again]
    assert len(first) == 500
    tags = {c.tag for c in first}
    for expected in ("xff-valid", "xff-invalid", "xff-spoofed-left", "xff-underscore", "odd-path", "binary-junk"):
        assert expected in tags
    assert any(len(c.data) > 8190 for c in first)


def test_compose_replica_loss_kills_a_replica_and_starts_it_again() -> None:
    commands = compose.plan(["replica-loss"])
    kill = next(c for c in commands if c[:2] == ["docker", "kill"])
    assert kill[2:4] == ["--signal", "KILL"]
    assert ["docker", "start", kill[-1]] in commands
    assert any("wget" in c and compose.REPLICA_ALERT in c[-1] for c in commands)


def test_compose_graceful_restart_stops_each_replica_within_the_grace_period() -> None:
    grace = yaml.safe_load((REPO_ROOT / "compose" / "app.yaml").read_text())["services"]["app"]["stop_grace_period"]
    commands = compose.plan(["graceful-restart"])
    stops = [c for c in commands if c[:2] == ["docker", "stop"]]
    assert len(stops) == 2  # every replica the dry run lists
    assert all(c[2:4] == ["--time", str(round(traefik.go_duration_s(grace)))] for c in stops)


def test_compose_graceful_restart_drains_each_replica_from_traefik_before_stopping_it() -> None:
    commands = compose.plan(["graceful-restart"])
    for container in ("c0ffee000001", "c0ffee000002"):
        drain = commands.index(next(c for c in commands if "app.drain" in " ".join(c) and container in c))
        assert commands[drain][-2:] == ["172.31.240.10", "172.31.241.10"]  # every address it has
        # Fed by the deploy script's own feed of Traefik's metrics (read inside Traefik's container).
        assert commands[drain][4:9] == ["docker", str(compose.DEPLOY_SCRIPT), "7ea0f1c00001", container, "15"]
        assert drain < commands.index(next(c for c in commands if c[1] == "stop" and c[-1] == container))


def test_compose_drain_runs_the_deploy_scripts_feed_into_the_replicas_drain(tmp_path: Path) -> None:
    """The drain command itself, against a stand-in `docker`: the replica's drain reads the snapshots that
    scripts/deploy.sh --metrics-feed fetches inside Traefik's container, and its status is the command's."""
    docker = tmp_path / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        'echo "$*" >>"$0.calls"\n'
        'case "$1 $2 $3" in\n'
        "  'exec traefik01 wget') echo 'traefik_service_server_up{url=\"http://172.31.240.10:8000\"} 0' ;;\n"
        "  'exec -i replica01') sed '/^# EOF$/q' >\"$0.fed\"; exit 4 ;;\n"
        "esac\n"
    )
    docker.chmod(0o755)
    argv = compose.ComposeCommands(docker=str(docker)).drain("replica01", ["172.31.240.10"], "traefik01")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert (tmp_path / "docker.fed").read_text() == (
        'traefik_service_server_up{url="http://172.31.240.10:8000"} 0\n# EOF\n'
    )
    calls = (tmp_path / "docker.calls").read_text().splitlines()
    assert "exec traefik01 wget -q -T 2 -O - http://127.0.0.1:8082/metrics" in calls
    assert "exec -i replica01 python -m app.drain --metrics-url - --timeout 15 172.31.240.10" in calls


def test_compose_commands_follow_compose_env_unless_files_are_given() -> None:
    """No --file by default: `docker compose` reads COMPOSE_FILE / COMPOSE_ENV_FILES itself (the e2e suite)."""
    default = compose.ComposeCommands().compose("ps")
    assert "--file" not in default and "--env-file" not in default
    given = compose.ComposeCommands(files=("a.yaml", "b.yaml"), env_files=("x.env",), docker="/opt/docker")
    argv = given.compose("ps")
    assert argv[0] == "/opt/docker"
    assert argv[argv.index("ps") - 6 :] == ["--file", "a.yaml", "--file", "b.yaml", "--env-file", "x.env", "ps"]


def test_compose_replica_loss_without_alert_never_asks_alertmanager() -> None:
    commands = compose.plan(["replica-loss"], alert=False)
    assert any(c[:2] == ["docker", "kill"] for c in commands)
    assert not any("wget" in c for c in commands)


def test_compose_db_restart_stops_then_starts_postgres() -> None:
    commands = compose.plan(["db-restart"])
    tails = [c[-3:] for c in commands]
    stop = tails.index(["--timeout", "60", "postgres"])
    assert commands[stop][-4] == "stop"
    assert commands.index(next(c for c in commands if c[-2:] == ["start", "postgres"])) > stop


def test_compose_conn_exhaustion_shrinks_postgres_and_restores_it() -> None:
    commands = compose.plan(["conn-exhaustion"])
    recreate = [c for c in commands if "--force-recreate" in c]
    assert recreate[0][:2] == ["env", "POSTGRES_MAX_CONNECTIONS=6"]
    assert recreate[-1][0] == "docker"  # restored to the configured default
    scales = [c[c.index("--scale") + 1] for c in commands if "--scale" in c]
    assert scales == ["app=3", "app=2"]


def _judged(out: str) -> list[str]:
    """Lines of a report that state a result; a dry run must print none."""
    return [line for line in out.splitlines() if re.search(r"\b(PASS|FAIL|passed|failed|VIOLATION)\b", line)]


def test_cli_dry_run_against_compose(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "compose", "--action", "all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "docker kill --signal KILL" in out
    assert "nothing was run" in out.splitlines()[-1]
    assert _judged(out) == []


def test_cli_compose_flags_reach_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", "compose", "--action", "replica-loss", "--dry-run", "--no-alert", "--docker", "/opt/d"]
    assert main([*argv, "--file", "compose.yaml", "--file", "e2e.yaml", "--env-file", "stack.env"]) == 0
    out = capsys.readouterr().out
    assert "/opt/d compose --project-directory" in out
    assert "--file compose.yaml --file e2e.yaml --env-file stack.env ps --quiet app" in out
    assert "wget" not in out


def test_cli_dry_run_natively_starts_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*_args: object) -> None:
        raise AssertionError("a dry run ran a drill")

    for name in scenarios.DRILLS:
        monkeypatch.setitem(scenarios.DRILLS, name, must_not_run)
    assert main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in scenarios.DRILLS:
        assert f"would run {name}:" in out
    assert "nothing was run" in out.splitlines()[-1]
    assert _judged(out) == []


def test_cli_dry_run_refuses_a_results_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", "--json", str(tmp_path / "results.json")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "results.json").exists()


def test_compose_bad_input_excuses_only_the_answers_http_prescribes() -> None:
    assert badinput.is_protocol_answer("te-unknown:501") and badinput.is_protocol_answer("version-HTTP/9.9:505")
    assert not badinput.is_protocol_answer("te-unknown:500") and not badinput.is_protocol_answer("version-HTTP/2.0:502")
    assert not badinput.is_protocol_answer("header-huge:505") and not badinput.is_protocol_answer("te-bad-chunk:500")
