"""Subcommands of the `stable-sam` CLI, one module each: `stable_sam.commands.<name>` exposes
`add_parser(subparsers)` (registering a subparser called <name>) and `run(args) -> int`.

Keep module-level imports light (argparse, stdlib): every command module is imported to build
--help; import torch and the model inside run().
"""

COMMANDS = ("segment", "visualize", "train", "evaluate", "export-onnx", "reproduce", "demo",
            "serve")


class CliError(Exception):
    """A user-facing error: the CLI prints the message (no traceback) and exits with status 2."""
