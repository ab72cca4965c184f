"""Writing exported configs (export, plan --export): every output checked before any is
written (tuneplan.cli.files: no overwrite without --force, no writing through a link,
atomic), what the stack cannot express said on stderr in one line per file."""

from __future__ import annotations

import os
import sys
from typing import Any

from tuneplan.cli.files import STDOUT, Output, check_output, check_outputs, write_output
from tuneplan.errors import TuneplanError


def output_for(path: str, file_name: str, force: bool, what: str) -> Output:
    """Where one export goes: '-' (stdout), a file, or an existing folder (the target's file name in it)."""
    if path != STDOUT and os.path.isdir(path) and not os.path.islink(path):
        path = os.path.join(path, file_name)
    return check_output(what, path, force)


def outputs_in_folder(folder: str, exports: list[Any], force: bool) -> list[Output]:
    """One output per export inside `folder` (created if missing), all checked first."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise TuneplanError(f"--export {folder}: not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise TuneplanError(f"cannot create folder {folder}: {e.strerror or e}") from None
    outs = [check_output(e.target.label, os.path.join(folder, e.file_name), force) for e in exports]
    check_outputs(outs)
    return outs


def report(exp: Any, out: Output) -> None:
    """stderr: what the stack cannot express (one line), notes, and where the file went."""
    name = exp.target.name
    if exp.cannot:
        sys.stderr.write(f"tuneplan: {name} cannot express: {'; '.join(exp.cannot)}\n")
    for note in exp.notes:
        sys.stderr.write(f"tuneplan: note: {note}\n")
    if not out.to_stdout:
        sys.stderr.write(f"tuneplan: wrote {out.path} ({exp.target.label}; run: "
                         f"{exp.launch.replace(exp.file_name, out.path)})\n")


def write(exp: Any, out: Output) -> None:
    report(exp, out)
    write_output(out, exp.text.encode("utf-8"))
