"""Ingestion, the split protocol, synthetic data and run-data loading."""
