"""A stand-in for the `docker` CLI, just enough for scripts/deploy.sh.

It keeps a simulated set of containers in a JSON state file ($FAKE_DOCKER_STATE) and appends one JSON line
per call to $FAKE_DOCKER_LOG, so a test can check what the rollout did and in which order.

Scenario knobs in the state file:
- "plans": list of health sequences for containers created by `compose up`, by creation order; each
  `inspect` of the health status advances one step and the last step repeats.
- "image_plans": {image: sequence} used when "plans" has no entry for that creation index.
- "default_plan": sequence for everything else.
- "migrate_exit", "pull_exit": exit codes of `compose run --rm migrate` and `compose pull`.
- "default_replicas": replicas `compose up` starts when no --scale is given.
- "ps_exit": exit code of `compose ps` (nothing printed when non-zero).
- "unready_images": images whose replicas never answer /readyz 200 (`docker exec ... python -c ...`).
- "drain_exit": exit code of `docker exec -i <id> python -m app.drain ...` (0: Traefik took it out); each
  container records "drained" (whether it was asked) and the arguments it was given; the call records the
  first snapshot of Traefik's metrics the drain read on stdin ("drain_feed").
- "traefik_metrics": what `docker exec <traefik> wget ...` prints (Traefik's metrics, read inside its
  container); "traefik_down": `compose ps -q traefik` lists nothing.
- "bad_page_images": images whose replicas answer GET / with a 500; the fake `curl` (same script, called
  as `curl`) fails while any running replica has such an image, as Traefik's round robin would.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

State = dict[str, Any]
TRAEFIK_ID = "traefik" + "0" * 57


def load() -> State:
    with open(os.environ["FAKE_DOCKER_STATE"], encoding="utf-8") as fh:
        state: State = json.load(fh)
    return state


def save(state: State) -> None:
    with open(os.environ["FAKE_DOCKER_STATE"], "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1)


def record(argv: list[str], **extra: Any) -> None:
    entry = {"argv": argv, "image_env": os.environ.get("TALLY_IMAGE"), "cwd": os.getcwd(), **extra}
    with open(os.environ["FAKE_DOCKER_LOG"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def find(state: State, cid: str) -> dict[str, Any] | None:
    containers: list[dict[str, Any]] = state["containers"]
    return next((c for c in containers if c["id"].startswith(cid)), None)


def running(state: State, service: str) -> list[dict[str, Any]]:
    return [c for c in state["containers"] if c["service"] == service and c["status"] == "running"]


def create(state: State, service: str) -> None:
    index = state.setdefault("created", 0)
    state["created"] = index + 1
    image = os.environ.get("TALLY_IMAGE", "tally:local")
    plans = state.get("plans", [])
    plan = (
        plans[index]
        if index < len(plans)
        else state.get("image_plans", {}).get(image, state.get("default_plan", ["starting", "healthy"]))
    )
    state["containers"].append(
        {
            "id": f"new{index + 1:03d}" + "f" * 58,
            "service": service,
            "image": image,
            "status": "running",
            "plan": plan,
            "polls": 0,
        }
    )


def compose(state: State, args: list[str]) -> int:
    sub, rest = args[0], args[1:]
    if sub == "pull":
        return int(state.get("pull_exit", 0))
    if sub == "run":
        return int(state.get("migrate_exit", 0))
    if sub == "ps":
        if state.get("ps_exit"):
            return int(state["ps_exit"])
        service = rest[-1]
        if service == "traefik" and not state.get("traefik_down"):
            print(TRAEFIK_ID)
        for c in running(state, service):
            print(c["id"])
        return 0
    if sub == "up":
        service = rest[-1]
        scale = None
        for i, a in enumerate(rest):
            if a == "--scale":
                name, _, num = rest[i + 1].partition("=")
                assert name == service, rest
                scale = int(num)
        have = len(running(state, service))
        want = scale if scale is not None else (have or int(state.get("default_replicas", 2)))
        if want < have:
            print("fake docker: scaling down is not simulated", file=sys.stderr)
            return 3
        if have and scale is not None and "--no-recreate" not in rest:
            # Real compose would recreate every replica at once with the new image: the outage under test.
            print("fake docker: scale without --no-recreate would recreate all replicas", file=sys.stderr)
            return 3
        for _ in range(want - have):
            create(state, service)
        return 0
    print(f"fake docker: unsupported compose {args}", file=sys.stderr)
    return 3


def read_snapshot() -> str:
    lines = []
    for line in sys.stdin:
        if line.rstrip("\n") == "# EOF":
            break
        lines.append(line)
    return "".join(lines)


def main(argv: list[str]) -> int:
    if argv[:2] == ["exec", TRAEFIK_ID] and "wget" in argv:
        # Read-only and concurrent with the drain's exec (the feed polls while it runs): no save.
        print(load().get("traefik_metrics", ""), end="")
        record(argv, rc=0)
        return 0
    state = load()
    extra: dict[str, Any] = {}
    rc = 0
    try:
        if argv[0] == "compose":
            rc = compose(state, argv[1:])
        elif argv[0] == "inspect":
            fmt, cid = argv[argv.index("--format") + 1], argv[-1]
            c = find(state, cid)
            if c is None:
                print(f"Error: No such object: {cid}", file=sys.stderr)
                rc = 1
            elif "Config.Image" in fmt:
                print(c["image"])
            elif "NetworkSettings.Networks" in fmt:
                print(f"172.31.240.{state['containers'].index(c) + 10} 172.31.241.{state['containers'].index(c) + 10} ")
            else:
                plan = c["plan"]
                health = plan[min(c["polls"], len(plan) - 1)]
                c["polls"] += 1
                status = c["status"]
                if health == "exited":
                    status, health = "exited", "unhealthy"
                    c["status"] = "exited"
                extra["answer"] = f"{status}/{health}"
                print(extra["answer"])
        elif argv[:2] == ["exec", "-i"] and argv[3:6] == ["python", "-m", "app.drain"]:
            c = find(state, argv[2])
            rc = 1 if c is None or c["status"] != "running" else int(state.get("drain_exit", 0))
            if c is not None:
                c["drained"], c["drain_args"] = True, argv[6:]
                extra["drain_feed"] = read_snapshot()
            print("drain: out of Traefik's rotation after 1.2s" if rc == 0 else "drain: Traefik did not report")
        elif argv[0] == "exec":
            c = find(state, argv[1])
            rc = 1 if c is None or c["status"] != "running" or c["image"] in state.get("unready_images", []) else 0
        elif argv[0] == "curl":
            serving = [c["image"] for c in running(state, "app")]
            if not serving or set(serving) & set(state.get("bad_page_images", [])):
                print("curl: (22) The requested URL returned error: 500", file=sys.stderr)
                rc = 22
            else:
                print("<p>You have visited this page <span>1</span> time.</p>")
        elif argv[0] == "stop":
            c = find(state, argv[-1])
            if c is None:
                rc = 1
            else:
                c["status"] = "exited"
        elif argv[0] == "rm":
            c = find(state, argv[-1])
            if c is None or (c["status"] == "running" and "-f" not in argv):
                print("Error: cannot remove", file=sys.stderr)
                rc = 1
            else:
                state["containers"].remove(c)
        else:
            print(f"fake docker: unsupported {argv}", file=sys.stderr)
            rc = 3
    finally:
        save(state)
        record(argv, rc=rc, **extra)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
