"""The command-line shell: tuneplan.cli.main holds the table of commands, options the
shared arguments, output the console and JSON helpers. Commands live in tuneplan.commands
and are imported only when chosen."""

from tuneplan.cli.main import main

__all__ = ["main"]
