"""A. The ceiling: consume in batches, produce every record to the processed topic unparsed.

What Python and librdkafka can move on this machine with the worker's producer settings;
nothing that does real work can be faster.
"""

from __future__ import annotations

from bench.contestants.common import Deliveries, arguments, consumer, produce, producer, readable


def main() -> None:
    args = arguments(__doc__ or "")
    source = consumer(args, f"{args.redis_prefix}ceiling")
    sink = producer(args)
    delivered = Deliveries()
    consumed = 0
    while consumed < args.expect:
        for msg in source.consume(1000, 0.005):
            if readable(msg):
                produce(sink, args.processed, msg.value() or b"", msg.key(), None, delivered)
                consumed += 1
        sink.poll(0)
    delivered.check(sink.flush(60))
    source.close()


if __name__ == "__main__":
    main()
