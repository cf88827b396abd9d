"""Development and test tooling, used by `tests/`, `harness/` and `bench/`; never by `wa_worker`.

- `devstack`: the local Kafka (KRaft) + Redis stack (`python -m devtools.devstack up|status|down`,
  or `scripts/devstack`).
- `webhooks`, `kafka`: WhatsApp webhook and envelope builders; produce to and read Kafka topics.
- `worker`: runs the real dataflow as a subprocess; `handler_server`: a local handler to call.

Not shipped: the wheel and the image hold only the worker's packages (tests/test_wheel.py checks
the wheel), because this needs the repository's checkout (`scripts/kafka/pom.xml`, `.stack/`).
"""
