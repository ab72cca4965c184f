"""Output files (--csv, --png): checked before anything is written, never overwritten without
--force (or a yes at a terminal prompt), never written through a symbolic link, written
atomically (a temporary file in the same folder, then os.replace), '-' meaning stdout."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuneplan.errors import TuneplanError

STDOUT = "-"


@dataclass(frozen=True)
class Output:
    """One output the command will write: what it is (CSV, PNG), the path it will write
    (after any suffix was added) or '-' for stdout."""

    what: str
    path: str

    @property
    def to_stdout(self) -> bool:
        return self.path == STDOUT


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _show(path: str) -> str:
    return path if path.isprintable() else repr(path)[1:-1]


def _confirm(path: str) -> bool:
    """Ask at a terminal whether to overwrite; never asks when input or errors are not a terminal."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    sys.stderr.write(f"tuneplan: {_show(path)} exists; overwrite it? [y/N] ")
    sys.stderr.flush()
    try:
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (OSError, KeyboardInterrupt):
        return False


def check_output(what: str, path: str, force: bool, suffix: str | None = None, stdout_ok: bool = True) -> Output:
    """Validate one output path before anything is written.

    Args:
        what: CSV, PNG (for messages).
        path: as the user gave it; '-' is stdout when `stdout_ok`.
        force: overwrite an existing regular file.
        suffix: the file type's suffix (".png"): added when the name has none, and any
            other suffix is refused (the file would not be what its name says).

    Raises:
        TuneplanError: stdout not possible, wrong suffix, a directory, a symbolic link or
            special file, an existing file without --force, or a folder that is missing or
            not writable.
    """
    if path == STDOUT:
        if not stdout_ok:
            raise TuneplanError(f"--{what.lower()} - (stdout) is not possible for {what}; give a file name")
        return Output(what, STDOUT)
    if not path or "\x00" in path:
        raise TuneplanError(f"--{what.lower()} needs a file name")
    p = Path(path)
    if suffix:
        if not p.suffix:
            p = p.with_name(p.name + suffix)
        elif p.suffix.lower() != suffix:
            raise TuneplanError(f"--{what.lower()} {_show(path)}: a {what} file name must end in {suffix}")
    shown = _show(str(p))
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise TuneplanError(f"cannot write {shown}: {_reason(e)}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise TuneplanError(f"{shown} is a symbolic link; tuneplan does not write through links "
                                "(remove it or choose another name)")
        if stat.S_ISDIR(st.st_mode):
            raise TuneplanError(f"{shown} is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise TuneplanError(f"{shown} is not a regular file; give another name")
        if not force and not _confirm(str(p)):
            raise TuneplanError(f"{shown} exists; pass --force to overwrite it")
    folder = p.parent
    try:
        if not folder.is_dir():
            raise TuneplanError(f"cannot write {shown}: folder {_show(str(folder))} does not exist")
    except OSError as e:
        raise TuneplanError(f"cannot write {shown}: {_reason(e)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TuneplanError(f"cannot write {shown}: folder {_show(str(folder))} is not writable")
    return Output(what, str(p))


def check_outputs(outputs: list[Output]) -> None:
    """Refuse two outputs to the same file, or two to stdout."""
    seen: dict[str, str] = {}
    for o in outputs:
        key = o.path if o.to_stdout else os.path.abspath(o.path)
        if key in seen:
            raise TuneplanError(f"{seen[key]} and {o.what} would both go to {_show(o.path)}; give different names")
        seen[key] = o.what


def write_output(out: Output, data: bytes) -> None:
    """Write `data` to stdout, or atomically to the file (temporary file + os.replace, so a
    reader never sees half a file and a symbolic link put there meanwhile is replaced, not followed)."""
    if out.to_stdout:
        sys.stdout.flush()
        if hasattr(sys.stdout, "buffer"):
            sys.stdout.buffer.write(data)
        else:  # a text stream standing in for stdout (tests, notebooks)
            sys.stdout.write(data.decode())
        sys.stdout.flush()
        return
    p = Path(out.path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise TuneplanError(f"cannot write {_show(out.path)}: {_reason(e)}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
