"""`wa-worker ingress`: Meta's webhook endpoint, a stateless process in front of Kafka.

It answers Meta's verify handshake, checks each POST's X-Hub-Signature-256 over the raw bytes,
and publishes the envelope to the inbound topic, answering 200 only once Kafka acknowledged it.
"""
