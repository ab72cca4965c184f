"""Output files (tuneplan.cli.files) and probe --record: every path checked before the work
starts, no overwrite of a file that appeared while a command ran, no temporary file left
behind by an error, Ctrl-C or SIGTERM. CPU only, no torch needed, a few seconds."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_run import cli

from tuneplan.cli import files, main
from tuneplan.errors import TuneplanError

MATRIX = ["matrix", "--models", "llama-3.2-1b", "--methods", "lora", "--devices", "rtx-4090"]
TINY = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=512,
            max_position_embeddings=1024, tie_word_embeddings=False)
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and symbolic links")




def one_line_error(code: int, err: str, match: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- 17: no overwrite of a file created meanwhile


def test_file_created_after_the_check_is_not_overwritten(tmp_path):
    p = tmp_path / "fit.csv"
    out = files.check_output("CSV", str(p), force=False)
    assert not out.overwrite
    p.write_text("someone else's\n")  # appears while the command computes
    with pytest.raises(TuneplanError, match="was created while tuneplan ran; not overwritten"):
        files.write_output(out, b"model,method\n")
    assert p.read_text() == "someone else's\n" and temps(tmp_path) == []


@posix_only
def test_link_created_after_the_check_is_neither_followed_nor_replaced(tmp_path):
    target = tmp_path / "precious"
    target.write_text("precious")
    p = tmp_path / "fit.csv"
    out = files.check_output("CSV", str(p), force=False)
    p.symlink_to(target)
    with pytest.raises(TuneplanError, match="was created while"):
        files.write_output(out, b"x")
    assert p.is_symlink() and target.read_text() == "precious" and temps(tmp_path) == []


def test_matrix_csv_created_during_the_run_exits_2_in_one_line(tmp_path, capsys, monkeypatch):
    import tuneplan.commands.matrix as cmd

    p = tmp_path / "fit.csv"
    real = cmd.fit_matrix

    def slow_matrix(*a, **k):  # the long computation, during which another program writes the file
        p.write_text("written meanwhile\n")
        return real(*a, **k)

    monkeypatch.setattr(cmd, "fit_matrix", slow_matrix)
    code, out, err = cli(capsys, *MATRIX, "--csv", p)
    one_line_error(code, err, "was created while tuneplan ran")
    assert p.read_text() == "written meanwhile\n" and temps(tmp_path) == []
    # with --force the user allowed overwriting: the file is replaced
    code, out, err = cli(capsys, *MATRIX, "--csv", p, "--force")
    assert code == 0 and p.read_text().startswith("model,method"), err


def test_force_replaces_and_a_free_name_is_created(tmp_path):
    p = tmp_path / "a.csv"
    files.write_output(files.check_output("CSV", str(p), force=False), b"one\n")
    assert p.read_text() == "one\n"
    out = files.check_output("CSV", str(p), force=True)
    assert out.overwrite
    files.write_output(out, b"two\n")
    assert p.read_text() == "two\n" and temps(tmp_path) == []


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_without_hard_links_the_name_is_still_claimed_exclusively(tmp_path, monkeypatch, code):
    def no_link(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "link", no_link)
    p = tmp_path / "b.csv"
    out = files.check_output("CSV", str(p), force=False)
    files.write_output(out, b"data\n")
    assert p.read_text() == "data\n"
    with pytest.raises(TuneplanError, match="was created while"):
        files.write_output(out, b"other\n")
    assert p.read_text() == "data\n" and temps(tmp_path) == []


def test_write_restores_the_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    files.write_output(files.check_output("CSV", str(tmp_path / "c.csv"), force=False), b"x")
    assert signal.getsignal(signal.SIGTERM) == before and files._TEMPS == set()


# ---------------------------------------------------------------- 18: no temporary file left by a signal

CHILD = textwrap.dedent("""
    import signal, sys, time
    from tuneplan.cli import files, main

    mode, path = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a shell starts a program
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if mode == "handler":  # a program that installed its own SIGTERM handler: it still runs
        def own(signum, frame):
            print("own handler", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, own)

    def pause(tmp):  # the temporary file holds the data; wait here to be signalled
        print("READY " + tmp, flush=True)
        time.sleep(60)

    files._after_temp_written = pause
    sys.exit(main(["matrix", "--models", "llama-3.2-1b", "--methods", "lora", "--devices", "rtx-4090",
                   "--csv", path]))
""")


@posix_only
@pytest.mark.parametrize("mode,sig,rc", [("default", signal.SIGTERM, -signal.SIGTERM),
                                         ("default", signal.SIGINT, None),  # 130 or 1: main's choice
                                         ("handler", signal.SIGTERM, 3)],
                         ids=["sigterm", "sigint", "sigterm-own-handler"])
def test_signal_while_writing_leaves_no_temporary_file(tmp_path, mode, sig, rc):
    p = tmp_path / "fit.csv"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(p)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), (line, proc.stderr.read() if proc.poll() is not None else "")
        tmp = Path(line.split(" ", 1)[1].strip())
        assert tmp.exists() and tmp.parent == tmp_path and tmp.name.startswith(".fit.csv.")
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == rc if rc is not None else proc.returncode > 0, proc.stderr.read()
    assert temps(tmp_path) == [] and not p.exists()


# ---------------------------------------------------------------- 16: probe --record checked before the probe runs


@pytest.fixture
def no_probe(monkeypatch, tmp_path):
    """The probe's work fails the test if it starts: torch check, model build, run."""
    import tuneplan.commands.probe as cmd
    import tuneplan.probe as probe_pkg

    class Started(Exception):
        pass

    def started(*a, **k):
        raise Started("the probe started")

    for mod, name in ((cmd, "_run_single"), (cmd, "_run_multi"), (probe_pkg, "available")):
        monkeypatch.setattr(mod, name, started)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    return cfg, Started


def probe_args(cfg: Path, *extra) -> list[str]:
    return ["probe", str(cfg), "--device", "cpu", "--method", "lora", "--rank", "8", "--seq-len", "64",
            "--steps", "1", "--warmup", "1", *extra]


@posix_only
@pytest.mark.parametrize("kind,match", [("folder", "is a directory"), ("link", "symbolic link"),
                                        ("dangling-link", "symbolic link"), ("link-to-folder", "symbolic link"),
                                        ("under-a-file", "is not a folder")])
def test_probe_record_path_is_refused_before_the_probe_runs(capsys, tmp_path, no_probe, kind, match):
    cfg, _ = no_probe
    (tmp_path / "real.jsonl").write_text("")
    (tmp_path / "dir").mkdir()
    rec = tmp_path / "rec.jsonl"
    if kind == "folder":
        rec = tmp_path / "dir"
    elif kind == "link":
        rec.symlink_to(tmp_path / "real.jsonl")
    elif kind == "dangling-link":
        rec.symlink_to(tmp_path / "missing.jsonl")
    elif kind == "link-to-folder":
        rec.symlink_to(tmp_path / "dir")
    else:
        rec = tmp_path / "real.jsonl" / "probe.jsonl"
    code, out, err = cli(capsys, *probe_args(cfg, "--record", rec))
    one_line_error(code, err, "--record")
    assert match in err, err
    assert (tmp_path / "real.jsonl").read_text() == ""


def test_probe_default_record_path_is_checked_too(capsys, tmp_path, no_probe):
    cfg, _ = no_probe
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tuneplan").mkdir()
    (tmp_path / "cache" / "tuneplan" / "probe.jsonl").mkdir()  # the default record path is a folder
    code, out, err = cli(capsys, *probe_args(cfg))
    one_line_error(code, err, "is a directory")


def test_probe_good_record_paths_get_past_the_check(capsys, tmp_path, no_probe):
    cfg, started = no_probe
    for extra in (["--record", str(tmp_path / "new" / "folders" / "r.jsonl")], ["--no-record"], []):
        with pytest.raises(started):
            main(probe_args(cfg, *extra))
    with pytest.raises(started):  # --no-record ignores even an unusable default
        (tmp_path / "cache" / "tuneplan").mkdir(parents=True)
        (tmp_path / "cache" / "tuneplan" / "probe.jsonl").mkdir()
        main(probe_args(cfg, "--no-record"))
