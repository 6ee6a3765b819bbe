#!/usr/bin/env bash
# The whole test suite (make test runs set-up first).  Tests that need a service start it
# themselves (a real mlflow server on a free port) and stop it at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL=2
# Headless Chromium for the MLflow UI test: Debian's packages, installed when missing and possible.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium and chromium-driver for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# In CI a test that can only skip here (browser) must run: the fixtures turn the skip into a failure.
if [ -n "${CI:-}" ]; then export HARNESS_REQUIRE_ALL=1; fi
# Two workers (this machine's two cores; TEST_WORKERS=0 runs in one process): the SLURM tests
# and each module-scoped fixture's tests stay together on one worker (tests/conftest.py).
# The slowest tests are listed for whoever trims the suite next.
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadgroup --durations=20 "$@"
