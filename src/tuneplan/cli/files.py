"""Output files (--csv, --png, export, probe --record): checked before anything is computed,
never overwritten without --force (or a yes at a terminal prompt), never written through a
symbolic link, written atomically, '-' meaning stdout.

A file is written to a hidden temporary file in the same folder (.NAME.XXXX.tmp), then put in
place in one step: os.replace where overwriting was allowed, else os.link, which fails if the
name exists, so a file that appeared while a long command ran (after check_output said the
name was free) is never overwritten. The temporary file is removed on any error, on Ctrl-C
(KeyboardInterrupt) and on SIGTERM/SIGHUP (a handler installed for the write removes it, then
lets the signal end the process as it would have).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
    overwrite: bool = False  # --force or a yes at the prompt: replace whatever is there at write time

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
        force = True  # confirmed at the prompt
    folder = p.parent
    try:
        if not folder.is_dir():
            raise TuneplanError(f"cannot write {shown}: folder {_show(str(folder))} does not exist")
    except OSError as e:
        raise TuneplanError(f"cannot write {shown}: {_reason(e)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TuneplanError(f"cannot write {shown}: folder {_show(str(folder))} is not writable")
    return Output(what, str(p), overwrite=force)


def check_append(option: str, path: Path) -> Path:
    """Check a file that a command appends to (probe --record) before the work starts: not a
    symbolic link, a regular file if it exists, and otherwise creatable (the nearest existing
    folder above it is a writable folder; missing folders are made when appending).

    Raises:
        TuneplanError: the path cannot be appended to, in one line.
    """
    shown = f"{option} {_show(str(path))}"
    if not str(path) or "\x00" in str(path):
        raise TuneplanError(f"{option} needs a file name")
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # the folders above are looked at below
        st = None
    except OSError as e:
        raise TuneplanError(f"{shown}: {_reason(e)}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise TuneplanError(f"{shown}: is a symbolic link; give the file itself")
        if stat.S_ISDIR(st.st_mode):
            raise TuneplanError(f"{shown}: is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise TuneplanError(f"{shown}: not a regular file")
        if not os.access(path, os.W_OK):
            raise TuneplanError(f"{shown}: not writable")
        return path
    folder = Path(os.path.abspath(path)).parent
    while True:
        try:
            fst = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            folder = folder.parent
            continue
        except OSError as e:
            raise TuneplanError(f"{shown}: {_reason(e)}") from None
        if not stat.S_ISDIR(fst.st_mode):
            raise TuneplanError(f"{shown}: {_show(str(folder))} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TuneplanError(f"{shown}: folder {_show(str(folder))} is not writable")
        return path


def check_outputs(outputs: list[Output]) -> None:
    """Refuse two outputs to the same file, or two to stdout."""
    seen: dict[str, str] = {}
    for o in outputs:
        key = o.path if o.to_stdout else os.path.abspath(o.path)
        if key in seen:
            raise TuneplanError(f"{seen[key]} and {o.what} would both go to {_show(o.path)}; give different names")
        seen[key] = o.what


# ---------------------------------------------------------------- temporary files and signals

_TEMPS: set[str] = set()  # temporary files this process is writing, removed on error or signal
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))
_BLOCK = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n))


def _remove_temps() -> None:
    for tmp in list(_TEMPS):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _TEMPS.discard(tmp)


def _on_signal(previous: dict[int, object]):
    def handler(signum: int, frame: object) -> None:
        _remove_temps()
        prev = previous.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
            return
        # end the process as the signal would have (exit status: killed by signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return handler


@contextmanager
def _temp_cleanup_on_signal() -> Iterator[None]:
    """While writing: SIGTERM/SIGHUP first remove this process's temporary files, then act as
    they would have (a handler the program installed is called; the default ends the process).
    Signals are only handled in the main thread; elsewhere the finally clauses still clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, object] = {}
    try:
        for sig in _SIGNALS:
            prev = signal.getsignal(sig)
            if prev in (signal.SIG_IGN, None):  # ignored, or installed outside Python: leave it
                continue
            previous[sig] = prev
        handler = _on_signal(previous)
        for sig in previous:
            signal.signal(sig, handler)
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)  # type: ignore[arg-type]


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGHUP/SIGINT while a temporary file is created and registered, so no
    signal lands between the two (a pending one is delivered on leaving)."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = mask(signal.SIG_BLOCK, _BLOCK)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


def _after_temp_written(tmp: str) -> None:
    """Called once the temporary file holds the data, before it is put in place (tests pause here)."""


def _create_exclusively(tmp: str, p: Path) -> None:
    """Put `tmp` at `p` only if nothing is there: a hard link fails with EEXIST (it never
    follows or replaces a file, folder or link that appeared meanwhile). Where the file system
    has no hard links, the name is claimed with O_CREAT|O_EXCL and the claimed empty file
    replaced."""
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        os.replace(tmp, p)
        return
    try:
        os.unlink(tmp)  # the data now lives under the target's name too
    except OSError:
        pass


def write_output(out: Output, data: bytes) -> None:
    """Write `data` to stdout, or atomically to the file: a temporary file in the same folder,
    then os.replace when the output may overwrite (a reader never sees half a file, and a
    symbolic link put there meanwhile is replaced, not followed), else an exclusive create,
    so a file that appeared after check_output is refused in one line, not overwritten.

    Raises:
        TuneplanError: the file cannot be written, or appeared since it was checked.
    """
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
    with _temp_cleanup_on_signal():
        try:
            with _signals_blocked():
                fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
                _TEMPS.add(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            _after_temp_written(tmp)
            if out.overwrite:
                os.replace(tmp, p)
            else:
                _create_exclusively(tmp, p)
            _TEMPS.discard(tmp)
            tmp = None
        except FileExistsError:
            raise TuneplanError(f"{_show(out.path)} was created while tuneplan ran; not overwritten "
                                "(pass --force to overwrite it)") from None
        except OSError as e:
            raise TuneplanError(f"cannot write {_show(out.path)}: {_reason(e)}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                _TEMPS.discard(tmp)
