"""Run the tuneplan CLI in-process for a test: (exit code, stdout, stderr)."""

from tuneplan.cli import main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tuneplan ARGV`; argparse usage errors exit through SystemExit.
    Output captured before the call is dropped, so only this command's lines come back."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
