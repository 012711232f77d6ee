"""Generate a synthetic login-traffic data set (logs, labelled attacks, ground truth).

    python -m ipinsights_jobs.generate --output data/synth                      # tutorial scale, local
    python -m ipinsights_jobs.generate --output data/synth --users=1000 --gzip --seed=3
    python -m ipinsights_jobs.generate --output data/v4only --ipv6_rate=0 --ipv6_work_rate=0 --ipv6_mobile_rate=0
    python -m ipinsights_jobs.generate --output data/big --users=1000000 --n_files=200 --spark

Settings come from the project's ``conf/generate.yml`` (or ``--config``) with ``--name=value`` overrides;
a bare ``--flag`` sets a boolean setting (``--gzip``, ``--inject-attacks``). Prints the output paths.
Exit status: 0 ok, 2 a bad setting or a data set already in ``--output`` (without ``--overwrite``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ipinsights.synth import SynthSpec, generate_dataset, generate_dataset_spark
from ipinsights_jobs._common import (
    EXIT_USAGE,
    Job,
    JobContext,
    add_output_arg,
    add_spark_args,
    parse_with_overrides,
    require,
)

log = logging.getLogger("ipinsights.generate")

_BOOL_SETTINGS = {f.name for f in dataclasses.fields(SynthSpec) if f.type in (bool, "bool")}


JOB = Job("generate", SynthSpec, spark=False, errors=[(FileExistsError, EXIT_USAGE)])


def _flags_as_settings(argv: Sequence[str]) -> list[str]:
    """``--gzip`` -> ``--gzip=true`` for the boolean settings, so that they parse as overrides."""
    return [f"{a}=true" if "=" not in a and a[2:].replace("-", "_") in _BOOL_SETTINGS else a for a in argv]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="generate", description=__doc__.splitlines()[0], epilog="Other --name=value: any SynthSpec setting."
    )
    add_output_arg(parser, "output folder", old="--out", type=Path)
    parser.add_argument("--config", type=Path, default=None, help="YAML settings (default: the project's)")
    parser.add_argument("--spark", action="store_true", help="generate shards in Spark tasks (for large scales)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --output")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(parser)
    args, overrides = parse_with_overrides(parser, _flags_as_settings(sys.argv[1:] if argv is None else argv))
    require(parser, args, "output")

    def body(ctx: JobContext) -> None:
        started = time.perf_counter()
        if ctx.spark is not None:
            paths = generate_dataset_spark(ctx.spark, args.output, ctx.cfg, overwrite=args.overwrite)
        else:
            paths = generate_dataset(args.output, ctx.cfg, overwrite=args.overwrite)
        log.info("done in %.1f s", time.perf_counter() - started)
        print("\n".join(paths.listing()))

    job = dataclasses.replace(JOB, spark=True) if args.spark else JOB  # Spark only for --spark
    return job.run(args, body, args.config, overrides)


if __name__ == "__main__":
    sys.exit(main())
