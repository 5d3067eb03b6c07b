#!/usr/bin/env bash
# Runs scripts/openai_client_check.py against a running `srlm serve` with the official `openai`
# client from PyPI, in a virtual environment this script makes (once) under
# ${SRLM_OPENAI_VENV:-target/openai-venv}.
#
#   scripts/openai_client_check.sh http://127.0.0.1:8000/v1 MODEL
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${SRLM_OPENAI_VENV:-$here/../target/openai-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.40,<4"
fi
exec "$venv/bin/python" "$here/openai_client_check.py" "$@"
