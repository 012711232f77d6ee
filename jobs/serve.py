"""``ipinsights serve``: a SageMaker-compatible IP Insights endpoint (``GET /ping``, ``POST /invocations``).

    ipinsights serve --model model/ [--host 127.0.0.1] [--port 8080] [--workers N] [--config conf/serve.yml]
    python -m ipinsights_jobs.serve --model model/ --max_records=1000

Bound to loopback unless ``--host`` says otherwise. Inside a SageMaker container (which runs the
image with the argument ``serve``) the defaults come from the environment: model ``/opt/ml/model``,
``IPINSIGHTS_SERVE_HOST`` (set it to 0.0.0.0 in the image), ``SAGEMAKER_BIND_TO_PORT``,
``SAGEMAKER_MODEL_SERVER_WORKERS``. See ``ipinsights/serve/README.md``.

Exit status: 0 after a clean shutdown, 2 bad settings or a model that does not load.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ipinsights.core.config import ConfigError, parse_overrides
from ipinsights.serve.settings import ServeSettings, environment_settings
from ipinsights.storage.modelfile import ModelFileError
from ipinsights_jobs._common import EXIT_USAGE, Job, JobContext, parse_with_overrides

JOB = Job("serve", ServeSettings, spark=False, errors=[(ModelFileError, EXIT_USAGE)])

_FLAGS = ("model", "host", "port", "workers")  # settings with an option of their own


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, check the model, serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="ipinsights serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: /opt/ml/model, SageMaker's)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, help="port (default 8080, SageMaker's)")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per CPU core)")
    parser.add_argument("--config", help="YAML settings (default: the project's conf/serve.yml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (logs every refused request)")
    args, rest = parse_with_overrides(parser, argv)
    # Precedence: defaults < config file < environment < --name=value < explicit flags.
    try:
        overrides: dict[str, str] = {**environment_settings(), **parse_overrides(rest)}
    except ConfigError as exc:
        parser.error(str(exc))
    overrides.update({k: str(getattr(args, k)) for k in _FLAGS if getattr(args, k) is not None})
    if args.verbose:
        overrides["log_level"] = "debug"

    def body(ctx: JobContext) -> None:
        from ipinsights.serve.server import check_model, serve

        check_model(ctx.cfg)
        serve(ctx.cfg)

    return JOB.run(args, body, args.config, overrides)


if __name__ == "__main__":
    sys.exit(main())
