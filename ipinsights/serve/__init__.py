"""A SageMaker-compatible IP Insights endpoint (``ipinsights serve``) and embedding export.

- :mod:`~ipinsights.serve.protocol`: the inference contract (request parsing, content negotiation,
  response formatting), free of any web framework;
- :mod:`~ipinsights.serve.app`: the Starlette app, scoring through :class:`~ipinsights.score.scorer.Scorer`;
- :mod:`~ipinsights.serve.server`: uvicorn with one worker process per core;
- :mod:`~ipinsights.serve.export`: IP and entity embeddings to Parquet, in bounded memory;
- :mod:`~ipinsights.serve.mlflow_run`: the training job's MLflow run (params, per-epoch metrics, the model);
- :mod:`~ipinsights.serve.mlflow_pyfunc`: the model as an MLflow ``pyfunc`` scoring through the Scorer;

Running it as a SageMaker bring-your-own container: see ``README.md`` in this folder.
"""
