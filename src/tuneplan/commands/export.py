"""`tuneplan export`: the config a training stack loads as is, for a job, with the predicted
peak, the device verdict and the command that reproduces them in its header."""

from __future__ import annotations

import argparse

from tuneplan.checks import check_device_count, check_job
from tuneplan.cli.exports import output_for, write
from tuneplan.cli.options import (
    add_from_arguments,
    add_job_arguments,
    job_command,
    job_from_args,
    model_from_args,
    name,
)
from tuneplan.export import TARGET_NAMES, export_job
from tuneplan.hardware import resolve_device
from tuneplan.models import resolve_model

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


def run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    spec = resolve_model(model_from_args(args), hub=args.hub)
    device = resolve_device(args.gpu) if args.gpu else None
    check_job(spec, job, args.allow_long_context)
    if device:
        check_device_count(job, device)
    exp = export_job(args.to, spec, job, device, command=lambda j: job_command(spec.name, j, device))
    out = output_for(args.output, exp.file_name, args.force, exp.target.label)
    write(exp, out)
    return 0
