#!/usr/bin/env python3
"""The image's /healthcheck: asks the proxy's health endpoint (enabled by -allowhealthcheck)."""

import sys
import urllib.request

try:
    sys.exit(0 if urllib.request.urlopen("http://127.0.0.1:55555/health", timeout=2).status == 200 else 1)
except OSError:
    sys.exit(1)
