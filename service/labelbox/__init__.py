"""The Labelbox edge: what runstream sends to Labelbox and what it does with the answers.

``protocol`` (pure: the SDK's operations, the import's multipart layout, an HTTP answer into data or
an exception), ``errors`` (the exception hierarchy of PROTOCOL §5b), ``retry_policy`` (transient,
permanent or fatal, and the tenacity policy), ``error_scope`` (is a permanent error about the model run
or the payload), ``run_verdicts`` (model runs Labelbox rejects, remembered), ``request_budget`` and
``request_limiter`` (one process's request budget and its asyncio shell), ``import_dedup`` (one uuid once
per import) and ``client`` (the aiohttp shell that speaks the protocol).
"""
