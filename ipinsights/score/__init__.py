"""Score stage: events scored, flagged, grouped into cases and reported; imports core and storage.

Modules without Spark (the endpoint and notebooks use them too): :mod:`.rules` (the rule of a row, levels,
thresholds), :mod:`.scorer` and :mod:`.explain`, :mod:`.profiles` and :mod:`.profile_rows`,
:mod:`.schemas` (every table's columns), :mod:`.sidecars` (the rule for files kept beside a model),
:mod:`.calibration`, :mod:`.cases` (ids, severity, wording), :mod:`.verdicts` (investigators' verdicts),
:mod:`.report` (the page), :mod:`.worker` and :mod:`.batches` (what a Python worker does to a batch),
:mod:`.config` and :mod:`.evaluate`. The ``spark_`` modules are the Spark side; the job
(:mod:`.spark_job`) reads: resolve sidecars -> score -> flag -> group -> publish -> report.
"""
