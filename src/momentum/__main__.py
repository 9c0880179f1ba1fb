"""``python -m momentum``: ``bench`` runs the speed report, ``config`` shows the build,
``--version`` prints the version."""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Dispatch the sub-command in ``argv``; print help without one."""
    usage = ("usage: python -m momentum {bench,config} [options]\n"
             "       python -m momentum --version\n\n"
             "  bench      the speed report (python -m momentum bench --help)\n"
             "  config     how this build was compiled and how it will run\n"
             "  --version  print momentum's version\n")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage, end="")
        return 0
    if argv[0] == "--version":
        from momentum import __version__
        print(f"momentum {__version__}")
        return 0
    if argv[0] == "bench":
        from momentum.bench import main as bench
        return bench(argv[1:])
    if argv[0] == "config":
        from momentum import show_config
        show_config()
        return 0
    print(usage, end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
