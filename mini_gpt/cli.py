"""The `mini-gpt` command."""

from __future__ import annotations

import argparse
import sys

from . import files


def _cmd_files(args: argparse.Namespace) -> int:
    """Find (or download) and verify every course file; print where each one is."""
    failed = 0
    for name in files.FILES:
        try:
            print(f"ok       {name}  {files.course_file(name)}")
        except (files.CourseFileNotFoundError, files.ChecksumError) as exc:
            failed += 1
            print(f"missing  {name}  {exc}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mini-gpt", description="Train, sample and measure mini_gpt models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("files", help="find or download the course's data files and check their sha256")
    p.set_defaults(func=_cmd_files)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
