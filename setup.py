"""ipinsights: a self-hosted equivalent of Amazon SageMaker's IP Insights, as Spark + PyTorch jobs."""

from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("ipinsights/_version.py").read_text(), version)

# MLflow logging of the training job (ipinsights.serve.mlflow_run): the skinny client (about 120 MB and 10 s
# to install from scratch, against 850 MB and 80 s for the full mlflow) has the pyfunc flavour and the tracking
# and registry client; sqlalchemy and alembic add the local sqlite store (MLflow's default tracking URI).
MLFLOW = ["mlflow-skinny>=3,<4", "sqlalchemy>=2", "alembic>=1.13"]

setup(
    name="ipinsights",
    version=version["__version__"],
    description="Learn which IP addresses each entity uses and score new (entity, IP) events, on Spark",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The jobs/ folder ships as the ``ipinsights_jobs`` package so that the console script and
    # spark-submit on a cluster (``--py-files`` of the wheel) find the same entry points.
    # The shipped defaults (conf/*.yml) go inside the wheel as ipinsights_jobs/conf: an installed job without
    # --config finds them there (importlib.resources), a checkout in its conf/.
    packages=[*find_packages(include=["ipinsights", "ipinsights.*"]), "ipinsights_jobs", "ipinsights_jobs.conf"],
    package_dir={"ipinsights_jobs": "jobs", "ipinsights_jobs.conf": "conf"},
    package_data={"ipinsights": ["py.typed", "score/hosting_asns.txt"], "ipinsights_jobs.conf": ["*.yml"]},
    install_requires=[
        "numpy>=1.24",
        "pyarrow>=14",
        "pandas>=2.0,<3",  # pyspark 4.3 warns on pandas UDFs with pandas 3
        "pyyaml>=6",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "torch==2.13.0",
        # User agents (ipinsights.core.useragent: ingest, and later the scorer and endpoint): ua-parser's rules
        # with its Rust resolver (abi3 wheels, no compiler; 50x the pure-Python resolver it falls back to).
        "ua-parser[regex]>=1.0.1,<2",
    ],
    extras_require={
        # Spark 3.5 (EMR 7, Databricks 15.4/16.4 LTS) to 4.x; the versions CI tests are fixed in
        # scripts/constraints-spark*.txt.
        "spark": ["pyspark>=3.5,<5", "matplotlib>=3.7"],
        "serving": [
            "starlette>=1.10,<2",
            "uvicorn>=0.54",
            "uvloop>=0.23; sys_platform != 'win32'",
            "httptools>=0.9",
        ],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "ruff>=0.6",
            "hypothesis>=6.100",
            "moto[server]>=5",
            "mypy>=1.10",  # strict on ipinsights.core and ipinsights.storage (pyproject.toml)
            "pandas-stubs",
            "types-PyYAML",
            *MLFLOW,  # tests/test_mlflow.py logs to a local sqlite store
            # tests/test_deploy_services.py: deploy/ checked against the services' own models, offline
            "botocore>=1.34",  # EMR and EMR Serverless service models, parameter validator
            "databricks-sdk>=0.40",  # jobs.JobSettings (its version fixed in scripts/constraints-spark*.txt)
        ],
        "tune": ["optuna>=4"],  # jobs/tune.py: TPE and random search, ask/tell
        "mlflow": MLFLOW,
        # Leases on s3:// (conditional writes: If-None-Match / If-Match, which pyarrow cannot make).
        "s3": ["boto3>=1.36"],
    },
    entry_points={"console_scripts": ["ipinsights=ipinsights_jobs.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Security",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
