"""Score stage: verdict rules, scorer, profiles, calibration, the scoring job, reports and evaluation.
Imports core and storage. The Spark parts load the scorer once per Python worker through :mod:`.udf`.
"""
