"""Fault-injection harness: prove that every webhook event ends somewhere known."""
