#!/usr/bin/env bash
# Renders every Mermaid block in the Markdown docs to docs/diagrams/<file>-<n>.svg (plus the .mmd
# source it came from), for viewers that do not render Mermaid. tests/docs checks they are current.
set -euo pipefail
cd "$(dirname "$0")/.."
mmdc=.tools/node/node_modules/.bin/mmdc
[[ -x $mmdc ]] || { echo "render-diagrams: $mmdc missing; run make deps" >&2; exit 1; }
rm -rf docs/diagrams && mkdir -p docs/diagrams
.venv/bin/python - <<'PY'
from pathlib import Path
from harness.docs import DIAGRAMS, mermaid_blocks
for name, source in mermaid_blocks():
    (DIAGRAMS / f"{name}.mmd").write_text(source)
PY
for source in docs/diagrams/*.mmd; do
  "$mmdc" --quiet -p scripts/puppeteer.json -i "$source" -o "${source%.mmd}.svg"
  echo "render-diagrams: ${source%.mmd}.svg"
done
