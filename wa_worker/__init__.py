"""wa-worker: durable WhatsApp Cloud API webhook processing as a Bytewax dataflow."""
