"""The HTTP edge: the query API, the ops routes and the dashboard, one aiohttp application.

``query_api`` (the /v1 aggregate queries over the state's read-only interface), ``ops`` (health,
readiness, Prometheus, the DLQ summary, trends, the live stream, the dashboard page in ``static/``),
``models`` (every request and response body as a pydantic model), ``openapi`` (the served document,
derived from those models), ``pipeline_status`` and ``metric_history`` (pure: the documents the
dashboard's pipeline panel and trends read). The HTTP layer takes callables and snapshots, never a
consumer.
"""
