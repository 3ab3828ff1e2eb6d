"""Where the vtasks Valkey module (``libvtasks.so``) of this installation is.

The release wheel bundles it as ``django_vtasks/_module/libvtasks.so``, built from the same commit
as this Python package, so the two always speak the same protocol. A source checkout (an editable
install, ``pip install -e client-py``) has no bundled copy and uses the checkout's
``target/release`` instead, which ``cargo build --release`` refreshes.

Order of the search (the first file that exists wins):
1. ``$VTASKS_MODULE_PATH`` (an error if it names no file: a typo must not silently fall back);
2. the source checkout's ``target/release/libvtasks.so`` — only when this package is imported from
   that checkout, so a developer's fresh ``cargo build`` is never shadowed;
3. the copy bundled in the installed wheel;
4. ``./target/release/libvtasks.so`` in the current directory.
"""

import os
from pathlib import Path

MODULE_FILE = "libvtasks.so"
PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED = PACKAGE_DIR / "_module" / MODULE_FILE

BUILD_HINT = (
    "build it from the vtasks repository with `cargo build --release -p vtasks-module` "
    "(needs Rust and libclang-dev) and set VTASKS_MODULE_PATH=/path/to/target/release/"
    f"{MODULE_FILE}, or install the release wheel, which bundles it (see README, "
    '"Install")'
)


class ModuleFileNotFound(Exception):
    """No libvtasks.so where this installation looks; the message says where and what to do."""


def source_checkout() -> Path | None:
    """The repository root when this package is imported from a vtasks source checkout."""
    # <repo>/client-py/python/django_vtasks
    repo = PACKAGE_DIR.parents[2]
    if PACKAGE_DIR.parent.parent.name == "client-py" and (repo / "module" / "Cargo.toml").is_file():
        return repo
    return None


def candidates() -> list[tuple[str, Path]]:
    """(where, path) of every place libvtasks.so is looked for, in order (see the module doc)."""
    out = []
    env = os.environ.get("VTASKS_MODULE_PATH")
    if env:
        out.append(("$VTASKS_MODULE_PATH", Path(env)))
    repo = source_checkout()
    if repo is not None:
        out.append(("the source checkout's cargo build", repo / "target" / "release" / MODULE_FILE))
    out.append(("bundled in the django_vtasks package", BUNDLED))
    out.append(
        ("the current directory's cargo build", Path.cwd() / "target" / "release" / MODULE_FILE)
    )
    return out


def find() -> tuple[str, Path]:
    """(where, absolute path) of the libvtasks.so this installation uses, or ModuleFileNotFound."""
    env = os.environ.get("VTASKS_MODULE_PATH")
    if env and not Path(env).is_file():
        raise ModuleFileNotFound(
            f"VTASKS_MODULE_PATH={env}: no such file. Fix the path, or unset "
            f"it to use the module bundled with the wheel, or build one with "
            f"`cargo build --release -p vtasks-module`."
        )
    tried = []
    for where, path in candidates():
        if path.is_file():
            return where, path.resolve()
        tried.append(f"  {path} ({where})")
    raise ModuleFileNotFound(
        f"The vtasks Valkey module ({MODULE_FILE}) was not found: "
        f"{BUILD_HINT}.\nLooked in:\n" + "\n".join(tried)
    )
