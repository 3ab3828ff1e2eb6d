"""PEP 517 build backend of django-vtasks: maturin, plus the Valkey module.

maturin builds one Rust library per wheel, the pyo3 extension. The wheel also carries the Valkey
module (the workspace's ``module/`` crate -> ``django_vtasks/_module/libvtasks.so``, pyproject's
``[tool.maturin] include``), built from the same sources, so:

- ``build_sdist``: maturin's sdist, plus ``module/``'s sources, listed again as a workspace member
  (maturin keeps only the crates the extension needs);
- ``build_wheel`` (``pip install`` from the sdist or from a checkout): ``cargo build --release -p
  vtasks-module`` (needs libclang for bindgen), the library staged as package data for maturin and
  removed afterwards. ``VTASKS_BUILD_MODULE=0`` builds a wheel without it. scripts/dist stages its
  own release build and calls maturin directly (for the manylinux tag);
- ``build_editable``: maturin's; an editable install uses the checkout's ``target/release`` (see
  ``django_vtasks/module_file.py``).
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import maturin
from maturin import (  # noqa: F401 - the PEP 517 hooks maturin implements unchanged
    build_editable,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

MODULE_CRATE = "vtasks-module"
MODULE_DIR = "module"
STAGED = Path("python") / "django_vtasks" / "_module" / "libvtasks.so"


def _log(message: str) -> None:
    print(f"vtasks_build: {message}", file=sys.stderr, flush=True)


def _workspace_root() -> Path:
    """The Cargo workspace holding the module: the repository (client-py/..) or the sdist root."""
    here = Path.cwd().resolve()  # PEP 517: hooks run in the project directory (pyproject.toml)
    for d in (here, *here.parents):
        if (d / MODULE_DIR / "Cargo.toml").is_file() and (d / "Cargo.toml").is_file():
            return d
    raise FileNotFoundError(f"no {MODULE_DIR}/Cargo.toml above {here}")


@contextlib.contextmanager
def _staged_module():
    """The release libvtasks.so at STAGED for the duration of a maturin wheel build."""
    staged = Path.cwd() / STAGED
    if staged.is_file():  # staged by scripts/dist
        yield
        return
    if os.environ.get("VTASKS_BUILD_MODULE") == "0":
        _log("VTASKS_BUILD_MODULE=0: building the wheel without the Valkey module")
        yield
        return
    root = _workspace_root()
    _log(f"building the Valkey module: cargo build --release -p {MODULE_CRATE} (in {root})")
    try:
        subprocess.run(["cargo", "build", "--release", "-p", MODULE_CRATE], cwd=root, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(
            f"building the Valkey module failed ({e}). It needs Rust (cargo) and libclang "
            "(Debian/Ubuntu: apt-get install libclang-dev). Set VTASKS_BUILD_MODULE=0 to build the "
            "package without it (then point VTASKS_MODULE_PATH at a libvtasks.so)."
        ) from None
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    built = Path(meta["target_directory"]) / "release" / STAGED.name
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, staged)
    try:
        yield
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with _staged_module():
        return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def _add_module_member(cargo_toml: str) -> str:
    """The sdist's workspace manifest with the module crate among its members again."""
    lines = cargo_toml.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.replace(" ", "").startswith("members=["):
            if f'"{MODULE_DIR}"' not in line:
                lines[i] = line.replace("[", f'["{MODULE_DIR}", ', 1)
            return "".join(lines)
    raise ValueError("the sdist's Cargo.toml has no one-line `members = [...]`")


def build_sdist(sdist_directory, config_settings=None):
    name = maturin.build_sdist(sdist_directory, config_settings)
    path = Path(sdist_directory) / name
    module = _workspace_root() / MODULE_DIR
    files = sorted(
        p
        for p in module.rglob("*")
        if p.is_file()
        and "target" not in p.relative_to(module).parts
        and p.suffix in (".rs", ".toml", ".md")
    )
    with tarfile.open(path, "r:gz") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    prefix = members[0][0].name.split("/", 1)[0]
    mtime = members[0][0].mtime
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as out:
        for m, data in members:
            if m.name == f"{prefix}/Cargo.toml":
                data = _add_module_member(data.decode()).encode()
                m.size = len(data)
            out.addfile(m, io.BytesIO(data) if data is not None else None)
        for f in files:
            data = f.read_bytes()
            info = tarfile.TarInfo(f"{prefix}/{MODULE_DIR}/{f.relative_to(module).as_posix()}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            out.addfile(info, io.BytesIO(data))
    _log(f"added {len(files)} files of {MODULE_DIR}/ to {name}")
    return name
