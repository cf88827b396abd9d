"""The bench's stand-alone contestants (A ceiling, B tuned, C naive), each run as
`python -m bench.contestants.<name> --brokers … --inbound … --processed … --expect N`.
Each reads the inbound topic from the start and exits after `--expect` records."""
