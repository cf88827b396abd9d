"""The operator CLI (`wa-worker`) and the logic of its commands."""
