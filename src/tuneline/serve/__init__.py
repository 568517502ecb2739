"""The service of a finished run: HTTP (app.py, routes/), micro-batching, the monitoring store,
drift, the registry of versions and gated retraining."""
