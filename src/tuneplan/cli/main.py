"""`tuneplan COMMAND ...`: find the command in the table, import only its module, run it.

Like pip, the top-level parser knows only the names and one-line help of the commands,
so `tuneplan --help` imports no command module. A TuneplanError becomes one line on
stderr and exit code 2, with any control character of user text in it escaped (printable);
Ctrl-C is one line and exit code 130 (128 + SIGINT, as a shell reports it); a closed pipe on
stdout (`tuneplan models | head -1`) ends the command quietly with 0.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from tuneplan import __version__
from tuneplan.errors import TuneplanError

# name -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "estimate": ("tuneplan.commands.estimate", "per-GPU memory breakdown of one training step (GiB)"),
    "plan": ("tuneplan.commands.plan", "rank device x count x settings for a job by time or cost"),
    "matrix": ("tuneplan.commands.matrix", "fit matrix: models x methods x devices (table, CSV, PNG heatmap)"),
    "devices": ("tuneplan.commands.devices", "list the hardware catalog (usable memory, bandwidth, TFLOPS, prices)"),
    "models": ("tuneplan.commands.models", "list the bundled model catalog"),
    "trace": ("tuneplan.commands.trace", "run the real training step on fake tensors; exact peak (extra: trace)"),
    "export": ("tuneplan.commands.export", "write the config a training stack loads (trl, axolotl, llamafactory, ...)"),
    "probe": ("tuneplan.commands.probe", "run the real training step on this GPU or CPU; measured vs predicted (extra: probe)"),
    "serve": ("tuneplan.commands.serve", "local web page and JSON API over the same core (extra: web)"),
}


EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def printable(text: str) -> str:
    """A line for the terminal with every control or other non-printable character escaped as
    repr writes it (a newline as \\n, ESC as \\x1b, a bidi override as \\u202e): user text in a
    message can neither break it into several lines nor retitle or recolour the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def say_error(message: str) -> None:
    """The one line every error is printed as (stderr), control characters escaped."""
    sys.stderr.write(printable(f"tuneplan: error: {message}") + "\n")


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D102
        say_error(message)
        raise SystemExit(2)


def _top_parser() -> Parser:
    listing = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items())
    parser = Parser(prog="tuneplan", usage="tuneplan [--version] COMMAND [options]",
                    description="Plan an LLM fine-tune: memory, fit, time, cost.",
                    epilog=f"commands:\n{listing}\n\n`tuneplan COMMAND --help` for a command's options.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tuneplan {__version__}")
    return parser


def command_parser(name: str) -> tuple[Parser, object]:
    """The parser of one command and its module (imported now)."""
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = Parser(prog=f"tuneplan {name}", description=getattr(module, "DESCRIPTION", help_))
    module.add_arguments(parser)
    if parser.get_default("_command") is not None:  # a job command: its --help lists what it takes
        from tuneplan.cli.options import hide_not_taken

        hide_not_taken(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("tuneplan: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, and no error
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is still buffered
    does not fail again on the closed pipe (Python's documented recipe, signal module: SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced or captured stdout: no descriptor to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        top = _top_parser()
        top.parse_args(argv)  # --help / --version exit here
        top.print_help()
        return 2
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; choose one of: {', '.join(COMMANDS)}"
        say_error(f"unknown command {name!r}{hint}")
        return 2
    parser, module = command_parser(name)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except TuneplanError as e:
        say_error(str(e))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
