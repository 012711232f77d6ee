"""Score stage: verdict rules, scorer, profiles, calibration, the scoring job, reports and evaluation.
Imports core and storage.
"""
