#!/usr/bin/env bash
# Creates (idempotently) the Python virtualenv .venv at the repository root and
# installs tests/python-requirements.txt into it, from PyPI only.
#
#   bash scripts/setup-python.sh            # create/update .venv
#   .venv/bin/python -m pytest tests/infra -q
#
# Re-running is cheap: pip runs again only when the requirements file changed
# (its hash is kept in .venv/.requirements.sha256) or the venv is broken.
# Environment: PYTHON (default python3) picks the interpreter (3.10+).
set -euo pipefail

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; echo "setup-python.sh: unknown argument: $1" >&2; exit 2 ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
requirements="$repo_root/tests/python-requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

command -v "$python" >/dev/null || { echo "setup-python.sh: $python not found" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "setup-python.sh: Python 3.10+ needed, got $("$python" --version 2>&1)" >&2; exit 1; }
[[ -f "$requirements" ]] || { echo "setup-python.sh: missing $requirements" >&2; exit 1; }

# A venv whose interpreter no longer runs (moved repo, removed Python) is rebuilt.
if [[ -d "$venv" ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "setup-python.sh: $venv is broken, recreating it" >&2
  rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup-python.sh: creating $venv" >&2
  "$python" -m venv "$venv"
fi

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" ]] || ! "$venv/bin/python" -c 'import pytest, tree_sitter, tree_sitter_bicep' >/dev/null 2>&1; then
  echo "setup-python.sh: installing $(basename "$requirements")" >&2
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$venv/bin/python" -m pip install --quiet --requirement "$requirements"
  echo "$want" > "$stamp"
else
  echo "setup-python.sh: $venv is up to date" >&2
fi
