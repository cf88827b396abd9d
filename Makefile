.PHONY: run test lint stack-down bench bench-smoke

# Start local Kafka + Redis and run the worker on them.
run:
	scripts/run-local

# Install what is missing, then run every test against a real Kafka broker and Redis server.
test:
	scripts/bootstrap
	.venv/bin/python -m pytest -n 2 --dist loadfile --durations=25

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy .

stack-down:
	scripts/devstack down

# The side-by-side benchmark (README "Benchmark"); bench-smoke is the seconds-scale CI run.
bench:
	scripts/bootstrap
	.venv/bin/python -m bench

bench-smoke:
	scripts/bootstrap
	.venv/bin/python -m bench --smoke
