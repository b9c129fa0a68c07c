"""Courier's `dev --secure` driven by confluent-kafka and kafka-python with
nothing but their standard security settings: org A's producer writes over
SASL_SSL (SCRAM-SHA-512), org B's consumer reads and commits over SSL with
its client certificate, and an outsider without ACLs is refused and does
not see the topic.

Usage: python secure_compat.py DATA_DIR SASL_BOOTSTRAP SSL_BOOTSTRAP
"""
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import TopicAuthorizationFailedError

DATA, SASL, SSL = sys.argv[1], sys.argv[2], sys.argv[3]
CA = f"{DATA}/certs/ca.pem"
USERS = f"{DATA}/certs/users"
N = 50


def check(cond, what):
    if not cond:
        print(f"FAIL secure: {what}")
        sys.exit(1)
    print(f"ok   secure: {what}")


def sasl(user):
    return {"bootstrap.servers": SASL, "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": user, "sasl.password": f"{user}-secret", "ssl.ca.location": CA}


def mtls(user):
    return {"bootstrap.servers": SSL, "security.protocol": "SSL", "ssl.ca.location": CA,
            "ssl.certificate.location": f"{USERS}/{user}.pem", "ssl.key.location": f"{USERS}/{user}.key"}


# confluent-kafka: org A's producer over SASL_SSL.
delivered = []
p = Producer(sasl("a-producer"))
for i in range(N):
    p.produce("orders", key=f"cf{i}", value=f"v{i}", on_delivery=lambda e, m: delivered.append(e))
p.flush(30)
check(len(delivered) == N and all(e is None for e in delivered), f"confluent-kafka a-producer writes {N} records over SASL_SSL")

# confluent-kafka: org B's consumer over mTLS, in a group it may use.
c = Consumer({**mtls("b-consumer"), "group.id": "org-b-cf", "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
c.subscribe(["orders"])
seen = set()
deadline = time.time() + 60
while len(seen) < N and time.time() < deadline:
    m = c.poll(1.0)
    if m is None or m.error():
        continue
    if m.key() and m.key().decode().startswith("cf"):
        seen.add(m.key().decode())
check(len(seen) == N, f"confluent-kafka b-consumer reads all {N} over mTLS")
c.commit(asynchronous=False)
committed = c.committed([TopicPartition("orders", p) for p in range(3)], timeout=10)
check(sum(max(tp.offset, 0) for tp in committed) >= N, "b-consumer's commit is stored")
c.close()

# The outsider: refused, and the topic is not listed to it.
errors = []
p = Producer({**sasl("outsider"), "message.timeout.ms": 10000})
p.produce("orders", value="x", on_delivery=lambda e, m: errors.append(e))
p.flush(20)
check(errors and errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED,
      f"outsider's produce gets TOPIC_AUTHORIZATION_FAILED ({errors[0] if errors else 'no report'})")
topics = p.list_topics(timeout=10).topics
check("orders" not in topics, "outsider's Metadata does not list orders")
c = Consumer({**mtls("outsider"), "group.id": "org-b-outsider", "auto.offset.reset": "earliest"})
c.assign([TopicPartition("orders", 0, 0)])
refused = None
deadline = time.time() + 20
while refused is None and time.time() < deadline:
    m = c.poll(1.0)
    if m is not None and m.error():
        refused = m.error().code()
    elif m is not None:
        break
c.close()
check(refused in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED),
      f"outsider's fetch over mTLS is refused ({refused})")
# Wrong password: an authentication failure, not a hang.
p = Producer({**sasl("a-producer"), "sasl.password": "wrong", "message.timeout.ms": 5000, "log_level": 0})
try:
    p.list_topics(timeout=10)
    check(False, "a wrong password is refused")
except KafkaException as e:
    check(True, f"a wrong password is refused ({e.args[0].name()})")
p = None

# kafka-python: the same over SASL_SSL and SSL.
kp = KafkaProducer(bootstrap_servers=SASL, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                   sasl_plain_username="a-producer", sasl_plain_password="a-producer-secret", ssl_cafile=CA,
                   ssl_check_hostname=True)
futures = [kp.send("orders", key=f"kp{i}".encode(), value=b"v") for i in range(N)]
kp.flush(30)
check(all(f.get(timeout=30).offset >= 0 for f in futures), f"kafka-python a-producer writes {N} over SASL_SSL")
kc = KafkaConsumer("orders", bootstrap_servers=SSL, security_protocol="SSL", ssl_cafile=CA,
                   ssl_certfile=f"{USERS}/b-consumer.pem", ssl_keyfile=f"{USERS}/b-consumer.key",
                   group_id="org-b-kp", auto_offset_reset="earliest", enable_auto_commit=False,
                   consumer_timeout_ms=20000)
got = set()
for m in kc:
    if m.key and m.key.decode().startswith("kp"):
        got.add(m.key.decode())
    if len(got) == N:
        break
kc.commit()
kc.close()
check(len(got) == N, f"kafka-python b-consumer reads all {N} over mTLS and commits")
bad = KafkaProducer(bootstrap_servers=SASL, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                    sasl_plain_username="outsider", sasl_plain_password="outsider-secret", ssl_cafile=CA,
                    max_block_ms=10000)
try:
    bad.send("orders", b"x").get(timeout=15)
    check(False, "kafka-python outsider is refused")
except TopicAuthorizationFailedError:
    check(True, "kafka-python outsider gets TOPIC_AUTHORIZATION_FAILED")
except Exception as e:  # noqa: BLE001 - kafka-python may raise it wrapped
    check("TopicAuthorizationFailed" in type(e).__name__ or "TopicAuthorizationFailed" in str(e),
          f"kafka-python outsider is refused ({type(e).__name__}: {e})")
print("secure: all checks passed")
