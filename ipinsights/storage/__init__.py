"""Reading and writing: files, filesystems, the events table, SageMaker's CSV, Parquet, publishing and
model files. Imports only the core.
"""
