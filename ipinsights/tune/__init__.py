"""Tune stage: search space, trials, results and the tuning driver. Imports core, storage and train."""
