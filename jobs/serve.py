"""``ipinsights serve``: a SageMaker-compatible IP Insights endpoint (``GET /ping``, ``POST /invocations``).

    ipinsights serve --model model/ [--host 127.0.0.1] [--port 8080] [--workers N] [--config conf/serve.yml]
    python -m ipinsights_jobs.serve --model model/ --max_records=1000

Bound to loopback unless ``--host`` says otherwise. Inside a SageMaker container (which runs the
image with the argument ``serve``) the defaults come from the environment: model ``/opt/ml/model``,
``IPINSIGHTS_SERVE_HOST`` (set it to 0.0.0.0 in the image), ``SAGEMAKER_BIND_TO_PORT``,
``SAGEMAKER_MODEL_SERVER_WORKERS``. See ``ipinsights/serving/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ipinsights.core.config import ConfigError, load_config

try:  # installed as ipinsights_jobs; also runnable as a file from the repository
    from ipinsights_jobs._common import parse_with_overrides, setup_logging
except ImportError:  # pragma: no cover
    from _common import parse_with_overrides, setup_logging

log = logging.getLogger("ipinsights.serve")


def _env_defaults() -> dict[str, str]:
    """Settings that SageMaker (or the container image) passes through the environment."""
    env = {
        "model": os.environ.get("IPINSIGHTS_MODEL"),
        "host": os.environ.get("IPINSIGHTS_SERVE_HOST"),
        "port": os.environ.get("SAGEMAKER_BIND_TO_PORT"),
        "workers": os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS"),
    }
    return {k: v for k, v in env.items() if v}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, check the model, serve until interrupted."""
    from ipinsights.serve.server import check_model, serve
    from ipinsights.serve.settings import ServeSettings
    from ipinsights.storage.modelfile import ModelFileError

    parser = argparse.ArgumentParser(
        prog="ipinsights serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: /opt/ml/model, SageMaker's)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, help="port (default 8080, SageMaker's)")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per CPU core)")
    parser.add_argument("--config", help="YAML settings (e.g. conf/serve.yml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (logs every refused request)")
    args, rest = parse_with_overrides(parser, argv)
    setup_logging(args.verbose)
    # Precedence: defaults < config file < environment < --name=value < explicit flags.
    named = dict(a[2:].split("=", 1) for a in rest)
    overrides = {**_env_defaults(), **{k.replace("-", "_"): v for k, v in named.items()}}
    overrides.update(
        {k: str(v) for k, v in vars(args).items() if k in ("model", "host", "port", "workers") and v is not None}
    )
    if args.verbose:
        overrides["log_level"] = "debug"
    try:
        settings = load_config(ServeSettings, args.config, overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        check_model(settings)
    except ModelFileError as exc:
        log.error("%s", exc)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
