"""The shared core: configuration, addresses, the entity hash, the model and its metrics. Imports
nothing else of ipinsights.
"""
