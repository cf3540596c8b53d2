"""``hetcomp-dist`` command line: one subcommand per stage, each in its own module.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hetcomp_dist.errors import InputError

# command name -> module (explicit registry; add a line when a stage lands)
COMMANDS: dict[str, str] = {
    "ingest": "hetcomp_dist.cli.ingest",
    "synth": "hetcomp_dist.cli.synth",
    "evaluate": "hetcomp_dist.cli.evaluate",
    "teachers": "hetcomp_dist.cli.teachers",
    "ensemble": "hetcomp_dist.cli.ensemble",
    "knowledge": "hetcomp_dist.cli.knowledge",
    "distill": "hetcomp_dist.cli.distill",
    "run": "hetcomp_dist.cli.run",
    "recommend": "hetcomp_dist.cli.recommend",
    "export": "hetcomp_dist.cli.export",
}


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (a parent parser)."""
    from hetcomp_dist.progress import LEVELS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--log-level", choices=LEVELS, default="INFO", help="progress lines shown (default INFO)")
    return p


def _parser(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    from hetcomp_dist import __version__

    parser = argparse.ArgumentParser(prog="hetcomp-dist", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hetcomp-dist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, modname in COMMANDS.items():
        if chosen is None or name == chosen:
            mod = importlib.import_module(modname)
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, parents=[common])
            mod.add_arguments(p)
            p.set_defaults(_module=mod)
        else:
            sub.add_parser(name, help="(see hetcomp-dist NAME --help)")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, args = _parser(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from hetcomp_dist import storage

    try:
        from hetcomp_dist.progress import set_level

        set_level(args.log_level)
        storage.absolute_args(args)  # here, in the driver: Ray workers have working directories of their own
        return int(args._module.run(args) or 0)
    except InputError as e:
        print(f"error: {storage.redact(str(e))}", file=sys.stderr)
        return 2
