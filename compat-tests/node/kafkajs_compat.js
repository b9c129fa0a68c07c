// Courier driven by kafkajs (a pure-JavaScript client), default settings.
// Usage: node kafkajs_compat.js BOOTSTRAP   (with kafkajs resolvable via NODE_PATH)
const { Kafka, logLevel } = require("kafkajs");

const boot = process.argv[2];
const topic = "kjs-compat";
const N = 200;
const kafka = new Kafka({ clientId: "kjs-compat", brokers: [boot], logLevel: logLevel.NOTHING });

function check(cond, what) {
  if (!cond) {
    console.log(`FAIL kafkajs: ${what}`);
    process.exit(1);
  }
  console.log(`ok   kafkajs: ${what}`);
}

(async () => {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] });
  check((await admin.listTopics()).includes(topic), "create and list topics");

  const producer = kafka.producer();
  await producer.connect();
  const messages = Array.from({ length: N }, (_, i) => ({ key: `k${i}`, value: `v${i}` }));
  const sent = await producer.send({ topic, messages });
  check(sent.every((r) => r.errorCode === 0), `produce ${N} records`);
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: "kjs-group" });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = new Set();
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`read ${seen.size} of ${N}`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.add(message.key.toString());
        if (seen.size === N) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  check(seen.size === N, `consumer group reads all ${N} records`);
  await consumer.disconnect(); // commits on the way out

  const offsets = await admin.fetchOffsets({ groupId: "kjs-group", topics: [topic] });
  const committed = offsets[0].partitions.reduce((sum, p) => sum + Number(p.offset), 0);
  check(committed === N, "committed offsets add up to the records read");
  await admin.disconnect();
  console.log("kafkajs: all checks passed");
})().catch((e) => {
  console.log(`FAIL kafkajs: ${e.message}`);
  process.exit(1);
});
