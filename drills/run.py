"""Resilience drills: ``python -m drills --target native|compose --action ACTION [--short] [--duration S]``.

native   starts everything itself on 127.0.0.1 (PostgreSQL 15, gunicorn replicas with the production
         config, the real Traefik with the stack's configuration, Prometheus + Alertmanager for the alert),
         breaks it, measures, and stops every process it started.
compose  drives an already running compose stack with docker / docker compose (operators).

``--dry-run`` (either target) says what would be started, broken and measured, runs nothing and judges
nothing: no PASS/FAIL, no results file.

Exit status: 0 when every drill held its promises, 1 otherwise. Timing targets (how fast the service
came back, the slowest answer) are reported, not judged. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
from pathlib import Path

from .compose import ComposeCommands, ComposeDrills, DryRunner
from .report import DrillResult, dump
from .scenarios import DRILLS, FULL, SHORT

ACTIONS = list(DRILLS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m drills", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["native", "compose"], default="native")
    parser.add_argument("--action", choices=[*ACTIONS, "all"], default="all")
    parser.add_argument("--short", action="store_true", help="the short versions run by `make test`")
    parser.add_argument(
        "--duration", type=float, help="seconds of steady load before the fault and after recovery (each)"
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--workdir", type=Path, help="native: where logs and configs go (default: a temp dir)")
    compose = parser.add_argument_group("compose target")
    compose.add_argument("--url", default="https://localhost", help="public URL of the stack (Traefik)")
    compose.add_argument("--project-dir", type=Path, default=ComposeCommands().project_dir)
    compose.add_argument("--project-name", help="compose project name, if not the default")
    compose.add_argument(
        "--file",
        action="append",
        default=[],
        help="compose file (repeatable; default: COMPOSE_FILE, else compose.yaml)",
    )
    compose.add_argument(
        "--env-file", action="append", default=[], help="env file (repeatable; default: COMPOSE_ENV_FILES, else .env)"
    )
    compose.add_argument("--docker", default="docker", help="the docker CLI (default: docker)")
    compose.add_argument("--no-alert", action="store_true", help="replica-loss: do not wait for the alert")
    compose.add_argument("--verify-tls", action="store_true", help="verify the certificate (off: self-signed)")
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would run (compose: the docker commands), run nothing"
    )
    args = parser.parse_args(argv)
    if args.dry_run and args.json:
        parser.error("--json: a dry run measures nothing, so it has no results to write")
    return args


def plan_native(actions: list[str], args: argparse.Namespace) -> None:
    profile = (SHORT if args.short else FULL).with_duration(args.duration)
    print(
        f"drills (dry run, nothing is started): native, {profile.name} profile, on 127.0.0.1 - PostgreSQL 15,"
        " gunicorn replicas with the production config, Traefik, Prometheus and Alertmanager, under"
        f" {profile.users} Locust users x {profile.user_rps} req/s, {profile.steady_s:g} s steady load"
        " before each fault and after recovery",
        flush=True,
    )
    for action in actions:
        summary = (inspect.getdoc(DRILLS[action]) or "").split(".", 1)[0].replace("\n", " ")
        print(f"  would run {action}: {summary}", flush=True)


def run_native(actions: list[str], args: argparse.Namespace) -> list[DrillResult]:
    profile = (SHORT if args.short else FULL).with_duration(args.duration)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tally-drills-"))
    print(f"drills: native, {profile.name} profile, logs under {workdir}", flush=True)
    results = []
    for action in actions:
        result = DRILLS[action](workdir / action, profile)
        print(result.text(), flush=True)
        results.append(result)
    return results


def run_compose(actions: list[str], args: argparse.Namespace) -> list[DrillResult]:
    commands = ComposeCommands(
        project_dir=args.project_dir,
        files=tuple(args.file),
        env_files=tuple(args.env_file),
        project=args.project_name,
        docker=args.docker,
    )
    drills = ComposeDrills(
        base_url=args.url,
        alert=not args.no_alert,
        commands=commands,
        insecure=not args.verify_tls,
        dry_run=args.dry_run,
        workdir=args.workdir or Path("drill-results"),
        **({"run": DryRunner()} if args.dry_run else {}),  # type: ignore[arg-type]
        **({"steady_s": args.duration} if args.duration else {}),
    )
    results = []
    for action in actions:
        if args.dry_run:
            print(f"== drill {action} (compose, dry run): would run", flush=True)
        result = drills.by_name()[action]()
        if not args.dry_run:
            print(result.text(), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    actions = ACTIONS if args.action == "all" else [args.action]
    if args.dry_run:
        if args.target == "native":
            plan_native(actions, args)
        else:
            run_compose(actions, args)
        print(f"drills: dry run of {len(actions)} drill(s), nothing was run and nothing was judged")
        return 0
    results = run_native(actions, args) if args.target == "native" else run_compose(actions, args)
    if args.json:
        args.json.write_text(dump(results) + "\n")
    failed = [r.drill for r in results if not r.passed]
    slow = [r.drill for r in results if r.slower_than_target]
    print(
        f"drills: {len(results) - len(failed)}/{len(results)} passed"
        + (f"; FAILED: {failed}" if failed else "")
        + (f"; slower than a timing target (not a failure): {slow}" if slow else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
