"""Dataflow steps: parse, per-conversation handling and retry, completion source."""
