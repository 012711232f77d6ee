"""Ingest stage: raw access logs -> the events table (log parsing, the ingest run). Imports core and storage."""
