"""CPU per message of a consume -> produce stage: aiokafka against
confluent-kafka (librdkafka), on the local stack's broker.

Each round makes two fresh topics (6 partitions), feeds the input topic
from a separate process at ``--rate`` messages a second (``--rate 0``:
fills it before the stage starts, a burst), and runs a stage that reads
each message and writes one of the same size to the output topic
(idempotent producer, acks=all, no linger; offsets committed once a
second, as the services' stream runtime does). It reports the stage
process's CPU per message and the broker's over the same window (the
broker's includes the feeder's requests, the same for both clients).
Clients alternate within each round; the aiokafka stage runs on uvloop,
as the services do.

confluent-kafka is not a project dependency (docs/performance-history.md, "What
halving would take"): run this from a scratch environment that has both
clients, on a running stack:

    python -m venv /tmp/kafka-clients
    /tmp/kafka-clients/bin/pip install confluent-kafka==2.16.1 aiokafka==0.14.0 uvloop==0.23.0
    . .run/env
    /tmp/kafka-clients/bin/python scripts/bench_kafka_clients.py --rate 80 --count 1200 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

SIZE = 1024
PARTITIONS = 6
COMMIT_INTERVAL = 1.0


# The clients' settings are built here, not from invoicing_common's: the
# script runs in an environment that has only the two clients.
def _kafka() -> dict[str, str]:
    return {
        "bootstrap": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        "protocol": os.environ.get("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        "mechanism": os.environ.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        # Admin: it creates and deletes the scratch topics.
        "user": os.environ["KAFKA_ADMIN_USERNAME"],
        "password": Path(os.environ["KAFKA_ADMIN_PASSWORD_FILE"]).read_text().strip(),
    }


def _librdkafka(**extra: Any) -> dict[str, Any]:
    k = _kafka()
    conf = {
        "bootstrap.servers": k["bootstrap"],
        "security.protocol": k["protocol"],
        "sasl.mechanism": k["mechanism"],
        "sasl.username": k["user"],
        "sasl.password": k["password"],
        "log_level": 3,
    }
    conf.update(extra)
    return conf


def _aiokafka() -> dict[str, Any]:
    k = _kafka()
    return {
        "bootstrap_servers": k["bootstrap"],
        "security_protocol": k["protocol"],
        "sasl_mechanism": k["mechanism"],
        "sasl_plain_username": k["user"],
        "sasl_plain_password": k["password"],
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_pid() -> int:
    # Where stack.py keeps its state (`.run/env` exports STACK_RUN_DIR).
    return int(Path(os.environ.get("STACK_RUN_DIR") or ".run", "pids", "kafka.pid").read_text())


def _topics(create: bool, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[import-not-found]

    admin = AdminClient(_librdkafka())
    futures = admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]) if create else admin.delete_topics(names)
    for future in futures.values():
        future.result()


def feed(topic: str, rate: float, count: int) -> None:
    """Write ``count`` messages to ``topic``, ``rate`` a second (0: at once)."""
    from confluent_kafka import Producer  # type: ignore[import-not-found]

    producer = Producer(_librdkafka(**{"acks": "all", "linger.ms": 0 if rate else 5}))
    value = os.urandom(SIZE)
    start = time.perf_counter()
    for i in range(count):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        producer.produce(topic, key=uuid.uuid4().bytes, value=value)
        producer.poll(0)
    producer.flush()


def stage_confluent(source: str, sink: str, count: int) -> None:
    from confluent_kafka import Consumer, Producer  # type: ignore[import-not-found]

    consumer = Consumer(
        _librdkafka(
            **{
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    producer = Producer(_librdkafka(**{"enable.idempotence": True, "acks": "all", "linger.ms": 0}))
    consumer.subscribe([source])
    done, committed = 0, time.monotonic()
    try:
        while done < count:
            messages = consumer.consume(num_messages=500, timeout=1.0)
            for message in messages:
                if message.error():
                    continue
                producer.produce(sink, key=message.key(), value=message.value(), headers=message.headers())
                done += 1
            if messages:
                producer.flush()  # acknowledged before the offsets move
                if time.monotonic() - committed >= COMMIT_INTERVAL:
                    consumer.commit(asynchronous=False)
                    committed = time.monotonic()
    finally:
        consumer.close()


async def stage_aiokafka(source: str, sink: str, count: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(
        source, group_id=f"bench-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest", enable_auto_commit=False,
        **_aiokafka(),
    )  # fmt: skip
    producer = AIOKafkaProducer(enable_idempotence=True, acks="all", linger_ms=0, **_aiokafka())
    await consumer.start()
    await producer.start()
    done, committed = 0, time.monotonic()
    try:
        while done < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            deliveries = []
            for records in batch.values():
                for record in records:
                    deliveries.append(
                        await producer.send(sink, key=record.key, value=record.value, headers=list(record.headers))
                    )
                    done += 1
            if deliveries:
                await asyncio.gather(*deliveries)  # acknowledged before the offsets move
                if time.monotonic() - committed >= COMMIT_INTERVAL:
                    await consumer.commit()
                    committed = time.monotonic()
    finally:
        await consumer.stop()
        await producer.stop()


def one_run(client: str, rate: float, count: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    source, sink = f"bench.clients.{run}.in", f"bench.clients.{run}.out"
    _topics(True, [source, sink])
    feeder: subprocess.Popen[bytes] | None = None
    try:
        if rate:
            feeder = subprocess.Popen([sys.executable, __file__, "--feed", source, str(rate), str(count)])
        else:
            feed(source, 0, count)
        # Imported before the window: it measures the stage, not its start-up imports.
        import aiokafka  # type: ignore[import-untyped]  # noqa: F401
        import confluent_kafka  # type: ignore[import-not-found]  # noqa: F401
        import uvloop

        broker = _broker_pid()
        broker_before, cpu_before, started = _cpu_seconds(broker), time.process_time(), time.perf_counter()
        if client == "confluent-kafka":
            stage_confluent(source, sink, count)
        else:
            uvloop.run(stage_aiokafka(source, sink, count))
        wall = time.perf_counter() - started
        cpu, broker_cpu = time.process_time() - cpu_before, _cpu_seconds(broker) - broker_before
    finally:
        if feeder is not None:
            feeder.wait(timeout=60)
        _topics(False, [source, sink])
    return {
        "client": client,
        "rate": rate,
        "count": count,
        "wall_seconds": round(wall, 2),
        "stage_cpu_us_per_message": round(cpu / count * 1e6, 1),
        "broker_cpu_us_per_message": round(broker_cpu / count * 1e6, 1),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--feed":
        feed(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=80.0, help="messages a second into the stage (0: a burst)")
    parser.add_argument("--count", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the runs here too")
    args = parser.parse_args()
    runs = []
    for _ in range(args.rounds):
        for client in ("aiokafka", "confluent-kafka"):
            result = one_run(client, args.rate, args.count)
            print(json.dumps(result), flush=True)
            runs.append(result)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
