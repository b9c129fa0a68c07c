//! What verified reads cost the ledger's read path itself, apart from any
//! client: writes a ledger of 1 KiB records in blocks of about 1 MiB (as
//! a produce at load makes them), then reads it all back through
//! `LedgerStore::read_from` (what Fetch calls) with `ledger.verify.reads`
//! off and on, alternating, several rounds, from the page cache. Prints
//! each round's GB/s and the on/off ratio of the medians; also what a
//! full SHA-256 of every read would cost, for comparison.
//!
//! Usage: ledger-read-bench [MiB (default 512)] [rounds (default 5)]

use std::time::Instant;

use bytes::BytesMut;
use courier_consensus::ledger::{Block, BlockHash, Durability, LedgerStore, PartitionKey, WriteSet};
use courier_protocol::records::{assign_offset, encode_batch, NewRecord, ProducerIds};

const PK: PartitionKey = PartitionKey {
    topic_id: [3; 16],
    partition: 0,
};
const RECORDS_PER_BATCH: usize = 16;
const BATCHES_PER_BLOCK: usize = 64;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(Ok(512), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let dir = tempdir()?;
    let store = LedgerStore::open(&dir.join("ledger.redb"), Durability::None)?;
    let value = vec![b'x'; 1000];
    let mut written = 0usize;
    while written < mib << 20 {
        let state = store.partition_state(&PK)?;
        let mut batches = BytesMut::new();
        let mut offset = state.next_offset;
        for _ in 0..BATCHES_PER_BLOCK {
            let records: Vec<NewRecord> = (0..RECORDS_PER_BATCH)
                .map(|_| NewRecord {
                    value: Some(&value),
                    ..Default::default()
                })
                .collect();
            let mut b = BytesMut::from(&encode_batch(1_000, ProducerIds::NONE, &records)[..]);
            assign_offset(&mut b, offset, 0);
            offset += RECORDS_PER_BATCH as i64;
            batches.extend_from_slice(&b);
        }
        written += batches.len();
        let block = Block::of_batches(PK, &state, batches.freeze(), offset, 1_000);
        store.commit(&WriteSet {
            blocks: vec![block.seal()],
            ..Default::default()
        })?;
    }
    let end = store.partition_state(&PK)?.next_offset;
    println!(
        "ledger of {} MiB in blocks of about 1 MiB; {rounds} rounds",
        written >> 20
    );
    // One read of everything, as consumers' fetches of 1 MiB make it.
    let read_all = |sha: bool| -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut offset = 0;
        let mut bytes = 0usize;
        while offset < end {
            let blocks = store.read_from(&PK, offset, 1 << 20)?;
            for b in &blocks {
                bytes += b.batches.len();
                if sha {
                    std::hint::black_box(BlockHash::of(&b.batches));
                }
                offset = b.next_offset;
            }
        }
        Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e9)
    };
    read_all(false)?; // warm the page cache
    let (mut off, mut on, mut sha) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        store.set_verify_reads(false);
        off.push(read_all(false)?);
        store.set_verify_reads(true);
        on.push(read_all(false)?);
        store.set_verify_reads(false);
        sha.push(read_all(true)?);
        println!(
            "round {round}: verify off {:.2} GB/s, on {:.2} GB/s, a SHA-256 of every read instead {:.2} GB/s",
            off[round - 1],
            on[round - 1],
            sha[round - 1]
        );
    }
    let (off, on, sha) = (median(off), median(on), median(sha));
    println!(
        "medians: off {off:.2} GB/s, on {on:.2} GB/s (on/off {:.2}), SHA-256 instead {sha:.2} GB/s (sha/off {:.2})",
        on / off,
        sha / off
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("courier-read-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
