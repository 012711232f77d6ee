"""Generate a synthetic login-traffic data set (logs, labelled attacks, ground truth).

    python -m ipinsights_jobs.generate --out data/synth                      # tutorial scale, local
    python -m ipinsights_jobs.generate --out data/synth --users=1000 --gzip --seed=3
    python -m ipinsights_jobs.generate --out data/v4only --ipv6_rate=0 --ipv6_work_rate=0 --ipv6_mobile_rate=0
    python -m ipinsights_jobs.generate --out data/big --users=1000000 --n_files=200 --spark

Settings come from ``conf/generate.yml`` (or ``--config``) with ``--name=value`` overrides; a bare
``--flag`` sets a boolean setting (``--gzip``, ``--inject-attacks``). Prints the output paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ipinsights.core.config import ConfigError, config_to_dict, load_config
from ipinsights.synth import SynthSpec, generate_dataset, generate_dataset_spark

try:  # installed as ipinsights_jobs; also runnable as a file from the repository
    from ipinsights_jobs._common import add_spark_args, build_spark, setup_logging
except ImportError:  # pragma: no cover
    from _common import add_spark_args, build_spark, setup_logging

log = logging.getLogger("ipinsights.generate")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "generate.yml"
_BOOL_SETTINGS = {f.name for f in dataclasses.fields(SynthSpec) if f.type in (bool, "bool")}


def _overrides(extra: Sequence[str]) -> list[str]:
    """``--gzip`` -> ``--gzip=true`` for boolean settings; everything else must be ``--name=value``."""
    out = []
    for arg in extra:
        name = arg[2:].replace("-", "_") if arg.startswith("--") else ""
        out.append(f"{arg}=true" if "=" not in arg and name in _BOOL_SETTINGS else arg)
    return out


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Other --name=value: any SynthSpec setting."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--config", type=Path, default=None, help=f"YAML settings (default: {DEFAULT_CONFIG.name} if present)"
    )
    parser.add_argument("--spark", action="store_true", help="generate shards in Spark tasks (for large scales)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_spark_args(parser)
    args, extra = parser.parse_known_args(argv)
    return args, _overrides(extra)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    setup_logging(args.verbose)
    config = args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        spec = load_config(SynthSpec, config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("spec: %s", config_to_dict(spec))
    started = time.perf_counter()
    try:
        if args.spark:
            spark = build_spark("ipinsights-generate", args.master, args.spark_conf)
            paths = generate_dataset_spark(spark, args.out, spec, overwrite=args.overwrite)
        else:
            paths = generate_dataset(args.out, spec, overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("done in %.1f s", time.perf_counter() - started)
    for name in ("manifest", "test_labelled", "validation_labelled", "events", "networks", "networks_v6", "users"):
        if getattr(paths, name) is not None:
            print(f"{name}\t{getattr(paths, name)}")
    print(f"logs\t{paths.logs_dir} ({len(paths.logs)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
