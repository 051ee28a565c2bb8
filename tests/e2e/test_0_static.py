"""Fast checks that keep the e2e build honest (no engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.engine import E2E, image_refs
from tests.stack.stackutil import REPO


def dockerfiles() -> list[Path]:
    return [REPO / "Dockerfile", REPO / "backup" / "Dockerfile", *sorted((E2E / "images").glob("*/Dockerfile"))]


def test_no_dockerfile_asks_for_a_frontend_image() -> None:
    # A `# syntax=` directive makes BuildKit pull that frontend from a registry: the build then fails
    # wherever no registry is reachable, although the built-in frontend does everything these files use.
    for path in dockerfiles():
        head = path.read_text().lstrip().splitlines()[:5]
        assert not any(re.match(r"#\s*syntax\s*=", line, re.IGNORECASE) for line in head), path


def test_every_service_image_is_built_by_the_suite() -> None:
    script = (E2E / "build-images.sh").read_text()
    built_from = set(re.findall(r"\$\(ref_of ([a-z-]+)\)", script))
    refs = image_refs()
    built = {refs[name] for name in built_from}
    assert built_from <= set(refs)
    missing = {name: ref for name, ref in refs.items() if ref not in built}
    assert not missing, f"no stand-in or build for {missing} in tests/e2e/build-images.sh"
