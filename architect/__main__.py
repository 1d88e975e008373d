"""``python -m architect design requirements.yaml`` / ``python -m architect diagnose``.

Each subcommand lives in its own module and is imported only when it runs (no import-time work):
:mod:`architect.design.cli` and :mod:`architect.diagnose.cli`, each exposing ``main(argv) -> int``.
Exit codes: 0 ok, 1 a critical finding (diagnose) or a design that cannot meet its targets, 2 bad
input (a message naming the field or option).
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m architect {design,diagnose} [options]   (--help on each)"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "design":
        from architect.design.cli import main as run
    elif command == "diagnose":
        from architect.diagnose.cli import main as run
    else:
        print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
