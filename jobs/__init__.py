"""Thin entry points (``main(argv=None)``): installed as the ``ipinsights_jobs`` package."""
