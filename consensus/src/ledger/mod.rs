//! A partition's log *is* a ledger: a chain of blocks, each naming the hash of
//! the one before it, with contiguous Kafka offsets across blocks.

mod block;
pub mod faults;
mod payloads;
mod store;
mod verify;

pub use block::{
    get_str, put_str, senders_within, Block, BlockError, BlockHash, Head, PartitionKey, Receipt, RequestRecord,
    SealedBlock, Sender, BLOCK_FORMAT_VERSION,
};
pub use store::{
    CommittedOffset, Damage, DamageKind, Durability, LedgerStore, PartitionState, ProducerEntry, StoreError, WriteSet,
    CATALOG_VERSION,
};
pub use verify::{verify_ledger, verify_partition, CertCheck, ChainWalk, VerifyError, VerifyOptions, VerifyReport};

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use courier_protocol::records::{assign_offset, encode_batch, NewRecord, ProducerIds};

    const PK: PartitionKey = PartitionKey {
        topic_id: [7; 16],
        partition: 2,
    };

    /// Appends `n` blocks of `records` one-record batches each, as the
    /// executor would: offsets assigned, hash-linked.
    fn append(store: &LedgerStore, n: u64, records: usize) {
        for _ in 0..n {
            let state = store.partition_state(&PK).unwrap();
            let mut batches = BytesMut::new();
            let mut offset = state.next_offset;
            for _ in 0..records {
                let mut b = BytesMut::from(
                    &encode_batch(
                        1000 + offset,
                        ProducerIds::NONE,
                        &[NewRecord {
                            value: Some(b"x"),
                            ..Default::default()
                        }],
                    )[..],
                );
                assign_offset(&mut b, offset, 0);
                batches.extend_from_slice(&b);
                offset += 1;
            }
            let block = Block::of_batches(PK, &state, batches.freeze(), offset, 1000 + offset - 1);
            store
                .commit(&WriteSet {
                    blocks: vec![block.seal()],
                    ..Default::default()
                })
                .unwrap();
        }
    }

    #[test]
    fn a_replaced_store_never_hands_out_a_producer_id_again() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = LedgerStore::open(&a.path().join("ledger.redb"), Durability::Immediate).unwrap();
        let given: Vec<i64> = (0..100).map(|_| first.allocate_producer_id().unwrap()).collect();
        assert!(given.windows(2).all(|w| w[1] == w[0] + 1), "one after another");
        drop(first);
        // The same node with its disk replaced: a fresh store.
        let replaced = LedgerStore::open(&b.path().join("ledger.redb"), Durability::Immediate).unwrap();
        let next = replaced.allocate_producer_id().unwrap();
        assert!(given.iter().all(|g| *g < next), "{next} was handed out before");
        // Reopened, a store goes on from where it was.
        drop(replaced);
        let reopened = LedgerStore::open(&b.path().join("ledger.redb"), Durability::Immediate).unwrap();
        assert_eq!(reopened.allocate_producer_id().unwrap(), next + 1);
    }

    #[test]
    fn chain_survives_reopen_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
            append(&store, 5, 3);
        }
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        let state = store.partition_state(&PK).unwrap();
        assert_eq!((state.next_height, state.next_offset), (5, 15));
        let report = verify_partition(&store, &PK, |_| {}).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                blocks: 5,
                records: 15,
                receipts: 0,
                certified: 0,
                uncertified_tail: 5,
            }
        );
        let from_7 = store.read_from(&PK, 7, 1).unwrap();
        assert_eq!(from_7.len(), 1);
        assert_eq!((from_7[0].base_offset, from_7[0].next_offset), (6, 9));
        assert_eq!(store.read_from(&PK, 15, 1 << 20).unwrap().len(), 0);
        assert_eq!(store.first_block_reaching(&PK, 1010).unwrap().unwrap().height, 3);
    }

    #[test]
    fn payload_bytes_no_block_points_to_are_cut_off_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
            append(&store, 3, 2);
        }
        // A crash after the payload sync but before the redb commit leaves
        // bytes past the committed end.
        let payloads = path.with_extension("payloads");
        let committed = std::fs::metadata(&payloads).unwrap().len();
        let mut f = std::fs::OpenOptions::new().append(true).open(&payloads).unwrap();
        std::io::Write::write_all(&mut f, &[0xab; 777]).unwrap();
        drop(f);
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        assert_eq!(std::fs::metadata(&payloads).unwrap().len(), committed);
        append(&store, 2, 2);
        assert_eq!(verify_partition(&store, &PK, |_| {}).unwrap().records, 10);
    }

    #[test]
    fn a_payload_log_shorter_than_the_ledger_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
            append(&store, 2, 2);
        }
        let payloads = path.with_extension("payloads");
        let len = std::fs::metadata(&payloads).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&payloads)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert!(matches!(
            LedgerStore::open(&path, Durability::Immediate),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_block_that_does_not_extend_the_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LedgerStore::open(&dir.path().join("l.redb"), Durability::None).unwrap();
        append(&store, 1, 1);
        let forged = Block {
            partition: PK,
            height: 1,
            view: 0,
            prev_hash: BlockHash([9; 32]),
            base_offset: 1,
            next_offset: 1,
            max_timestamp: 0,
            config_version: 0,
            requests: vec![],
            senders: vec![],
            receipts: vec![],
            batches: Bytes::new(),
        };
        assert!(matches!(
            store.commit(&WriteSet {
                blocks: vec![forged.seal()],
                ..Default::default()
            }),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(store.partition_state(&PK).unwrap().next_height, 1);
    }

    #[test]
    fn verification_names_the_first_tampered_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = LedgerStore::open(&dir.path().join("l.redb"), Durability::None).unwrap();
        append(&store, 4, 2);
        // Change one value byte in block 2 and fix nothing else: the batches
        // no longer match the digest its head (and certificate) commits to.
        let mut raw = store.block(&PK, 2).unwrap().unwrap().to_vec();
        let last = raw.len() - 3;
        raw[last] ^= 0x20;
        store.tamper_block(&PK, 2, &raw).unwrap();
        match verify_partition(&store, &PK, |_| {}) {
            Err(VerifyError::BadBlock { height: 2, reason, .. }) => assert!(reason.contains("digest"), "{reason}"),
            other => panic!("expected block 2 to fail, got {other:?}"),
        }
        // Re-encode block 1 with a different timestamp: canonical and CRC-clean,
        // but block 2 no longer links to it.
        let mut b1 = Block::decode(&store.block(&PK, 1).unwrap().unwrap()).unwrap();
        b1.max_timestamp += 1;
        store.tamper_block(&PK, 1, &b1.encode()).unwrap();
        assert!(matches!(
            verify_partition(&store, &PK, |_| {}),
            Err(VerifyError::BadBlock { height: 2, .. })
        ));
    }

    /// Flips one byte of a file in place.
    fn flip(path: &std::path::Path, at: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x04], at).unwrap();
    }

    #[test]
    fn a_damaged_payload_is_never_served_and_a_proven_copy_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        append(&store, 4, 3);
        let good = Block::decode_sealed(&store.block(&PK, 2).unwrap().unwrap()).unwrap();
        // Block 2's payload is the third in the log: flip a byte in its middle
        // while the store is open (what a running node's disk can do).
        let per_block = store.block(&PK, 0).unwrap().unwrap().len() - Block::head_len(&good.head).unwrap();
        flip(
            &path.with_extension("payloads"),
            2 * per_block as u64 + per_block as u64 / 2,
        );
        // Offsets 6..9 live in block 2: a read from before it stops short of
        // it, a read starting in it fails, and nothing damaged is returned.
        let before = store.read_from(&PK, 3, 1 << 20).unwrap();
        assert_eq!(before.iter().map(|b| b.height).collect::<Vec<_>>(), vec![1]);
        match store.read_from(&PK, 6, 1 << 20) {
            Err(StoreError::Damaged(d)) => {
                assert_eq!((d.height, d.kind), (2, DamageKind::Payload));
            }
            other => panic!("a damaged block was read: {other:?}"),
        }
        assert!(matches!(store.block(&PK, 2), Err(StoreError::Damaged(_))));
        assert_eq!(store.damaged().iter().map(|d| d.height).collect::<Vec<_>>(), vec![2]);
        // Blocks after it are still served.
        assert_eq!(store.read_from(&PK, 9, 1 << 20).unwrap()[0].height, 3);
        // A block that is not the one the chain holds there is refused.
        let mut other = good.block.clone();
        other.max_timestamp += 1;
        assert!(store.repair_block(&other.seal()).is_err());
        store.repair_block(&good).unwrap();
        assert!(store.damaged().is_empty());
        assert_eq!(store.block(&PK, 2).unwrap().unwrap(), good.block.encode());
        drop(store);
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        assert_eq!(verify_partition(&store, &PK, |_| {}).unwrap().records, 12);
    }

    #[test]
    fn a_damaged_head_is_caught_and_repaired_even_when_its_recorded_hash_is_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        append(&store, 3, 2);
        let good = Block::decode_sealed(&store.block(&PK, 1).unwrap().unwrap()).unwrap();
        drop(store);
        // Change the head's bytes wherever redb keeps them (its file holds
        // the record; older page copies may hold it too).
        let mut db = std::fs::read(&path).unwrap();
        let mut hits = 0;
        let mut at = 0;
        while let Some(i) = db[at..].windows(good.head.len()).position(|w| w == &good.head[..]) {
            let i = at + i;
            db[i + 60] ^= 0x01;
            hits += 1;
            at = i + 1;
        }
        assert!(hits > 0, "the head is in the database file");
        std::fs::write(&path, &db).unwrap();
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        match store.read_from(&PK, 2, 1 << 20) {
            Err(StoreError::Damaged(d)) => assert_eq!((d.height, d.kind), (1, DamageKind::Head)),
            other => panic!("a damaged head was read: {other:?}"),
        }
        assert!(matches!(store.block_head(&PK, 1), Err(StoreError::Damaged(_))));
        store.repair_block(&good).unwrap();
        assert_eq!(store.read_from(&PK, 2, 1 << 20).unwrap()[0].height, 1);
        assert_eq!(verify_partition(&store, &PK, |_| {}).unwrap().records, 6);
    }

    /// The next block of `PK` with no records (as a receipts-only block is):
    /// its commit writes only the database.
    fn empty_block(store: &LedgerStore) -> SealedBlock {
        let state = store.partition_state(&PK).unwrap();
        Block::of_batches(PK, &state, Bytes::new(), state.next_offset, -1).seal()
    }

    #[test]
    fn a_failed_write_or_fsync_loses_only_the_commit_it_failed_and_the_store_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        append(&store, 3, 2);
        // The payload log's sync fails: the commit fails before the
        // database is touched.
        store.faults().fail_syncs(1);
        let state = store.partition_state(&PK).unwrap();
        // (Block 0's batches again, at this block's offsets: any bytes do.)
        let mut with_payload = empty_block(&store).block;
        with_payload.batches = store.read_from(&PK, 0, 1).unwrap()[0].batches.clone();
        assert!(store
            .commit(&WriteSet {
                blocks: vec![with_payload.seal()],
                ..Default::default()
            })
            .is_err());
        assert_eq!(store.partition_state(&PK).unwrap(), state);
        // The database's own fsync fails: redb refuses everything after it
        // until reopened.
        store.faults().fail_syncs(1);
        let write = |store: &LedgerStore| {
            store.commit(&WriteSet {
                blocks: vec![empty_block(store)],
                ..Default::default()
            })
        };
        assert!(write(&store).is_err());
        assert!(
            write(&store).is_err(),
            "after a failed write, redb takes no more until reopened"
        );
        // The disk still fails: recovery says so and changes nothing.
        store.faults().fail_writes(1);
        assert!(store.recover().is_err());
        store.recover().unwrap();
        // Whether the commit whose fsync failed reached the disk is unknown:
        // when the store shows it, it is written again and synced.
        let failed = WriteSet {
            blocks: vec![{
                let mut b = empty_block(&store).block;
                b.height = state.next_height;
                b.prev_hash = state.last_hash;
                b.seal()
            }],
            ..Default::default()
        };
        match store.holds(&failed).unwrap() {
            Some(true) => {
                store.rewrite(&failed).unwrap();
            }
            _ => assert_eq!(store.partition_state(&PK).unwrap(), state),
        }
        append(&store, 2, 2);
        drop(store);
        let store = LedgerStore::open(&path, Durability::Immediate).unwrap();
        let report = verify_partition(&store, &PK, |_| {}).unwrap();
        assert_eq!(report.records, 10);
        assert!([5, 6].contains(&report.blocks), "{report:?}");
    }
}
