"""Train stage: data, optimiser, communication backends, the trainer and distributed training. Imports
core and storage.
"""
