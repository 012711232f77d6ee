"""ipinsights: learn which IP addresses each entity normally uses, and score new (entity, IP) events.

The library has no argument parsing and no global SparkSession: Spark-facing functions take ``spark``
or a DataFrame as their first argument, and the model, trainer and scorer import no Spark at all.
"""

from ipinsights._version import __version__

__all__ = ["__version__"]
