"""``python -m django_vtasks``: facts about this installation, for scripts and deployments.

    python -m django_vtasks module-path     # the libvtasks.so to load into valkey-server
    valkey-server --loadmodule "$(python -m django_vtasks module-path)"
    python -m django_vtasks version

Needs no Django settings.
"""

import argparse
import sys

from . import module_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m django_vtasks",
        description="Facts about this django-vtasks installation, for scripts and deployments.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "module-path",
        help="print the path of the libvtasks.so this installation "
        "uses (the one bundled in the wheel, unless VTASKS_MODULE_PATH or a source "
        "checkout's cargo build says otherwise)",
    )
    p.add_argument(
        "--verbose", "-v", action="store_true", help="also say on stderr where it was found"
    )
    sub.add_parser("version", help="print the installed django-vtasks version")
    args = parser.parse_args(argv)

    if args.command == "module-path":
        try:
            where, path = module_file.find()
        except module_file.ModuleFileNotFound as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.verbose:
            print(f"({where})", file=sys.stderr)
        print(path)
        return 0
    from . import __version__

    print(__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
