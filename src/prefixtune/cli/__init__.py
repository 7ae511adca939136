"""The `prefixtune` command: train, evaluate, generate, classify, fold, info, demo, sweep, serve, export.

Each command is a plain function taking parsed options; `main` maps names to them. A user's mistake
(a `PrefixTuneError`) prints one line naming the problem and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from prefixtune.errors import PrefixTuneError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it says something: not None, not a flag's, not said twice."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        said = "default" in help_text.lower() or "(0:" in help_text  # "(0: all of them)" says it
        if action.default in (None, "") or action.nargs == 0 or said:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from prefixtune.cli import classify, commands, demo, export, interop, serve, sweep

    parser = argparse.ArgumentParser(
        prog="prefixtune",
        description="Prefix-tuning (Li & Liang 2021) for Hugging Face models: train, evaluate, generate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = (commands, classify, demo, sweep, serve, interop, export)
    for name, (setup, run, summary) in {k: v for g in groups for k, v in g.COMMANDS.items()}.items():
        command = sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)
        setup(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except PrefixTuneError as err:
        print(f"prefixtune {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"prefixtune {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
