# -*- test-case-name: tests.test_cli -*-
"""The ``telenet`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telenet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the telemount story on this machine")
    demo.add_argument(
        "--plugin-name",
        default="telemount",
        help="driver name of the demo's volume plug-in (default: telemount)",
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo's logs and files")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from telenet.demo import DemoError, run_demo

        try:
            run_demo(plugin=args.plugin_name, keep=args.keep)
        except DemoError as e:
            print(f"telenet demo: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
