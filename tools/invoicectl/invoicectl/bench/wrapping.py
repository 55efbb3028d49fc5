"""The command line of the scripts that measure the local stack while a
command of the caller's runs (``scripts/cpu_inside.py -- invoicectl bench ...``)."""

from __future__ import annotations

import argparse


def parse_with_command(parser: argparse.ArgumentParser, command_help: str = "the command to run") -> argparse.Namespace:
    """Parse the arguments, everything after ``--`` being the command to
    run (``args.command``, without the ``--``); a usage error without one."""
    parser.add_argument("command", nargs=argparse.REMAINDER, help=f"-- {command_help}")
    args = parser.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the command to run after --")
    return args
