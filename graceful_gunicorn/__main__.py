"""``python -m graceful_gunicorn``: the operator's commands (``check``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; only ``check`` exists."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "check":
        print(
            "usage: python -m graceful_gunicorn check [--grace-period SECONDS] [gunicorn args]",
            file=sys.stderr,
        )
        return 2
    from ._gunicorn.check import main as check

    return check(args[1:])


if __name__ == "__main__":
    sys.exit(main())
