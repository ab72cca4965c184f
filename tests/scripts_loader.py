"""Load a benchmark or script of this repository as a module, for the tests that check them."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str | None = None):
    """The module at ROOT/relpath (e.g. "benchmarks/measured_runs.py"), registered in
    sys.modules under `name` (default: the file's stem) so its dataclasses can be pickled
    and looked up."""
    path = ROOT / relpath
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
