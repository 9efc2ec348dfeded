"""The `stable-sam` command line: `stable-sam COMMAND --help` for each command.

Commands live in `stable_sam.commands.<name>`; a command whose module is not present in this
build is listed as unavailable in --help instead of breaking the others.
"""

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Tuple

from .commands import COMMANDS, CliError


def _load_commands(subparsers) -> Tuple[Dict[str, object], List[str]]:
    missing = []
    loaded: Dict[str, object] = {}
    for name in COMMANDS:
        module_name = f"{__package__}.commands.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # the command exists but one of its imports is missing: show it
            missing.append(name)
            continue
        module.add_parser(subparsers)
        loaded[name] = module
    return loaded, missing


def build_parser():
    parser = argparse.ArgumentParser(
        prog="stable-sam",
        description="Stable-SAM: SAM with deformable-sampling and dynamic-routing plugins.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    loaded, missing = _load_commands(subparsers)
    if missing:
        parser.epilog = f"not available in this installation: {', '.join(missing)}"
    return parser, loaded


def _check_op_environment() -> None:
    """The op's settings read from the environment, checked before any work."""
    from stable_sam_ops import cpu_output_cache

    try:
        cpu_output_cache.check_setting()
    except ValueError as exc:
        raise CliError(str(exc)) from None


def main(argv: Optional[List[str]] = None) -> int:
    from .checkpoint import CheckpointError

    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        _check_op_environment()
        return int(commands[args.command].run(args))
    except (CliError, CheckpointError, OSError) as exc:  # OSError: a file that is missing,
        # unreadable or unwritable is the user's to fix; the message names it
        print(f"stable-sam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C where a command has no stop of its own: no traceback
        print(f"stable-sam {args.command}: interrupted by Ctrl+C", file=sys.stderr)
        return 128 + 2  # the shell's code for "killed by SIGINT"


if __name__ == "__main__":
    sys.exit(main())
