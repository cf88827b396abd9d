"""`wa-worker ingress`: Meta's webhook endpoint, a stateless process in front of Kafka.

It answers Meta's verify handshake, checks each POST's X-Hub-Signature-256 over the raw bytes,
and publishes the envelope to the inbound topic, answering 200 only once Kafka acknowledged it.

The HTTP server is aiohttp's, chosen by `python -m bench.ingress` (README "Receiving webhooks
from Meta"): per request, aiohttp 111 µs of CPU, uvicorn+httptools 74, granian 97; peak 4,179,
4,251 and 4,962 req/s, one process each on a shared 2-core machine. Close enough that what
decided was control: counting the body while reading it, and reading in-flight bodies during a
drain. The ingress itself, publishing with acks=all: 1,995 req/s, 0.81x its own ceiling.
"""
