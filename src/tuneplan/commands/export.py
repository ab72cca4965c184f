"""`tuneplan export`: the config a training stack loads as is, for a job, with the predicted
peak, the device verdict and the command that reproduces them in its header."""

from __future__ import annotations

import argparse
import sys

from tuneplan.cli.exports import output_for, write
from tuneplan.cli.options import (
    add_from_arguments,
    add_job_arguments,
    checked_request,
    job_command,
    name,
)
from tuneplan.export import TARGET_NAMES, Export, export_job
from tuneplan.fit import NO
from tuneplan.hardware import Device
from tuneplan.job import Job
from tuneplan.model_spec import ModelSpec

DESCRIPTION = ("Write the config a training stack loads as is (TRL, Axolotl, LLaMA-Factory, torchtune, Unsloth, "
               "accelerate, DeepSpeed) for a job. Every setting the estimate assumed is in it, or named on stderr "
               "and in the header as one the stack cannot express; the header gives the predicted peak per GPU, "
               "the fit on --gpu and the tuneplan command that reproduces them.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalog id or alias, or a path to config.json (or use --from)")
    add_job_arguments(p)
    add_from_arguments(p)
    p.add_argument("--to", required=True, type=name, choices=TARGET_NAMES, metavar="TARGET",
                   help=" | ".join(TARGET_NAMES))
    p.add_argument("-o", "--output", default="-", metavar="PATH",
                   help="file to write, or an existing folder (the target's file name is used); default: stdout")
    p.add_argument("--gpu", metavar="DEVICE", help="put the fit verdict on this device in the header")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def export_file(to: str, spec: ModelSpec, job: Job, device: Device | None) -> Export:
    """The file `export --to TO` writes (its text, header included), shared with `tuneplan serve`'s /api/export."""
    return export_job(to, spec, job, device, command=lambda j: job_command(spec.name, j, device))


def run(args: argparse.Namespace) -> int:
    spec, job, device = checked_request(args)
    exp = export_file(args.to, spec, job, device)
    out = output_for(args.output, exp.file_name, args.force, exp.target.label)
    write(exp, out)
    warn_fit(exp)
    return 0


def warn_fit(exp: Export) -> None:
    """One stderr line when the job written does not fit the --gpu given (the header says the
    same; a file written to disk is otherwise silent about it)."""
    if exp.verdict is not None and exp.verdict.verdict == NO:
        sys.stderr.write(f"tuneplan: warning: the exported job does not fit the --gpu given: {exp.verdict.summary()}\n")
