"""Where outcomes leave the dataflow."""
