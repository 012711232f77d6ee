"""A SageMaker-compatible IP Insights endpoint (``ipinsights serve``) and embedding export.

- :mod:`~ipinsights.serving.protocol`: the inference contract (request parsing, content negotiation,
  response formatting), free of any web framework;
- :mod:`~ipinsights.serving.app`: the Starlette app, scoring through :class:`~ipinsights.scorer.Scorer`;
- :mod:`~ipinsights.serving.server`: uvicorn with one worker process per core;
- :mod:`~ipinsights.serving.export`: IP and entity embeddings to Parquet, in bounded memory;
- :mod:`~ipinsights.serving.testing`: a toy model and a server subprocess for tests and benchmarks.

Running it as a SageMaker bring-your-own container: see ``README.md`` in this folder.
"""
