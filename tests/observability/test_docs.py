"""The receiver examples in docs/observability.md are valid Alertmanager configuration.

Operators copy them verbatim; each one replaces the receiver of the same name in the shipped
alertmanager.yml and must pass `amtool check-config`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import REPO_ROOT
from harness.observability import ALERTMANAGER_CONFIG, load_yaml
from harness.tools import find_tool

DOC = REPO_ROOT / "docs" / "observability.md"
MARKER = "<!-- receiver-example -->"


def receiver_examples() -> list[dict[str, Any]]:
    blocks = re.findall(re.escape(MARKER) + r"\s*```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    return [entry for block in blocks for entry in yaml.safe_load(block)]


def test_docs_have_receiver_examples() -> None:
    kinds = {key for entry in receiver_examples() for key in entry if key.endswith("_configs")}
    assert {"slack_configs", "pagerduty_configs", "email_configs", "webhook_configs"} <= kinds


@pytest.mark.parametrize("entry", receiver_examples(), ids=lambda e: f"{e['name']}-{next(k for k in e if k != 'name')}")
def test_receiver_example_is_valid_in_the_shipped_config(entry: dict[str, Any], tmp_path: Path) -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    names = [receiver["name"] for receiver in config["receivers"]]
    assert entry["name"] in names, "examples must keep the shipped receiver names so routes still apply"
    config["receivers"] = [entry if r["name"] == entry["name"] else r for r in config["receivers"]]
    path = tmp_path / "alertmanager.local.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [find_tool("/usr/bin/amtool"), "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
