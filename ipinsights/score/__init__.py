"""Score stage: verdict rules, scorer, profiles, calibration, the scoring job, cases and investigators'
verdicts (:mod:`.cases`, :mod:`.verdicts`), reports and evaluation. Imports core and storage. The Spark
parts load the scorer once per Python worker through :mod:`.udf`.
"""
