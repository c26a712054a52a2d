"""Running the app: aiohttp's server, workers on every core, the edge middleware and access log, log redaction."""
