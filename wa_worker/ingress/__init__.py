"""`wa-worker ingress`: Meta's webhook endpoint, a stateless process in front of Kafka.

It answers Meta's verify handshake, checks each POST's X-Hub-Signature-256 over the raw bytes,
and publishes the envelope to the inbound topic, answering 200 only once Kafka acknowledged it.

The HTTP server is aiohttp's on uvloop, measured with `python -m bench.ingress` (README
"Receiving webhooks from Meta"): CPU per request aiohttp 106 µs, uvicorn+httptools 58, granian
74 (one process each, a shared 2-core machine; about half in every run). aiohttp is kept for
control, not speed: it bounds a connection that never finishes its headers (uvicorn does not),
counts the body while reading it, and reads in-flight bodies during a drain; granian (which has
a header timeout) is the next candidate. The ingress, publishing with acks=all: 2,769 req/s,
0.78x its own ceiling (3,549), 168 µs of CPU per request.
"""
