"""Courier driven by confluent-kafka (librdkafka), default client settings.

Usage: python confluent_compat.py BOOTSTRAP
Exits non-zero on the first failed check.
"""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                   ConfigResource, NewTopic)

BOOT = sys.argv[1]
TOPIC = "cf-compat"
N = 300


def check(cond, what):
    if not cond:
        print(f"FAIL confluent-kafka: {what}")
        sys.exit(1)
    print(f"ok   confluent-kafka: {what}")


admin = AdminClient({"bootstrap.servers": BOOT})
for fut in admin.create_topics([NewTopic(TOPIC, num_partitions=3)]).values():
    fut.result(30)
check(TOPIC in admin.list_topics(timeout=30).topics, "create topic with 3 partitions")

res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC,
                     incremental_configs=[ConfigEntry("retention.ms", "3600000",
                                                      incremental_operation=AlterConfigOpType.SET)])
for fut in admin.incremental_alter_configs([res]).values():
    fut.result(30)
described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, TOPIC)])
configs = list(described.values())[0].result(30)
check(configs["retention.ms"].value == "3600000", "incremental alter + describe configs")

errors = []
producer = Producer({"bootstrap.servers": BOOT})
for i in range(N):
    producer.produce(TOPIC, key=f"k{i}", value=f"v{i}",
                     on_delivery=lambda err, msg: err and errors.append(err))
check(producer.flush(30) == 0 and not errors, f"produce {N} keyed records")

consumer = Consumer({"bootstrap.servers": BOOT, "group.id": "cf-group",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
consumer.subscribe([TOPIC])
seen = {}
deadline = time.time() + 60
while len(seen) < N and time.time() < deadline:
    m = consumer.poll(1.0)
    if m is None or m.error():
        continue
    seen[m.key().decode()] = m.value().decode()
check(len(seen) == N and all(seen[f"k{i}"] == f"v{i}" for i in range(N)),
      f"consumer group reads all {N} records")
consumer.commit(asynchronous=False)
committed = consumer.committed([TopicPartition(TOPIC, p) for p in range(3)], timeout=30)
check(sum(tp.offset for tp in committed) == N, "committed offsets add up to the records read")
consumer.close()

again = Consumer({"bootstrap.servers": BOOT, "group.id": "cf-group", "auto.offset.reset": "earliest"})
again.subscribe([TOPIC])
extra = 0
deadline = time.time() + 8
while time.time() < deadline:
    m = again.poll(0.5)
    if m is not None and not m.error():
        extra += 1
again.close()
check(extra == 0, "a restarted group member resumes after its commit")
print("confluent-kafka: all checks passed")
