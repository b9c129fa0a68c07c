"""Courier driven by kafka-python (a pure-Python client), default settings.

Usage: python kafka_python_compat.py BOOTSTRAP
"""
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

BOOT = sys.argv[1]
TOPIC = "kp-compat"
N = 200


def check(cond, what):
    if not cond:
        print(f"FAIL kafka-python: {what}")
        sys.exit(1)
    print(f"ok   kafka-python: {what}")


admin = KafkaAdminClient(bootstrap_servers=BOOT)
admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
check(TOPIC in admin.list_topics(), "create and list topics")

producer = KafkaProducer(bootstrap_servers=BOOT)
futures = [producer.send(TOPIC, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(N)]
producer.flush(30)
metas = [f.get(timeout=30) for f in futures]
check(len(metas) == N and all(m.offset >= 0 for m in metas), f"produce {N} records with acks")

consumer = KafkaConsumer(TOPIC, bootstrap_servers=BOOT, group_id="kp-group",
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         consumer_timeout_ms=15000)
seen = set()
for m in consumer:
    seen.add(m.key.decode())
    if len(seen) == N:
        break
check(len(seen) == N, f"consumer group reads all {N} records")
consumer.commit()
ends = consumer.end_offsets([TopicPartition(TOPIC, p) for p in range(2)])
committed = {p: consumer.committed(TopicPartition(TOPIC, p)) for p in range(2)}
check(all(committed[tp.partition] == off for tp, off in ends.items()), "commit reaches the end offsets")
consumer.close()

listed = admin.list_groups() if hasattr(admin, "list_groups") else admin.list_consumer_groups()
# kafka-python 3 returns dicts; 2.x returned (group, protocol_type) tuples.
groups = [g["group_id"] if isinstance(g, dict) else g[0] for g in listed]
check("kp-group" in groups, "list consumer groups")
print("kafka-python: all checks passed")
