"""spark-submit's application for the installed wheel: ``spark-submit driver.py SUBCOMMAND [flags]`` runs
``ipinsights SUBCOMMAND [flags]`` (spark-submit wants a Python file, the wheel gives a console command).

Upload it beside the wheel (EMR steps and EMR Serverless runs name it as their application / entryPoint);
the wheel itself must be installed on the nodes (EMR: deploy/emr/bootstrap.sh) or shipped in the packed
virtualenv (EMR Serverless: deploy/emr-serverless/). Exits with the command's status, so a failed job fails
the step or the job run.
"""

import sys

from ipinsights_jobs.cli import main

sys.exit(main())
