//! The contract: deterministic rules applied to each ordered batch before it
//! enters a block.
//!
//! Today it enforces Kafka's idempotent-producer semantics (KIP-98): per
//! producer id and partition, batches carry an epoch and consecutive sequence
//! numbers; a retried batch is recognised and answered with its original
//! offset instead of being written twice. Every replica runs the same rules
//! on the same ordered input and reaches the same state, which is why this
//! state lives here and not in the broker.

use std::collections::HashMap;

use crate::ledger::Sender;
use bytes::BytesMut;
use courier_protocol::records::{assign_offset, Batch, BatchHeader};

/// How many recent batches per producer are remembered for de-duplication;
/// Kafka's producers keep at most five requests in flight when idempotent.
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;

/// A batch this producer already wrote, remembered for de-duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RememberedBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
}

/// What the ledger remembers of one idempotent producer on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProducerState {
    pub epoch: i16,
    /// Newest last; at most [`PRODUCER_BATCHES_REMEMBERED`].
    pub recent: Vec<RememberedBatch>,
}

impl ProducerState {
    pub fn last_sequence(&self) -> Option<i32> {
        self.recent.last().map(|b| b.last_sequence)
    }
}

/// The contract's verdict on one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Append at the next offset.
    Append,
    /// Already written at `base_offset`; acknowledge without writing again.
    Duplicate { base_offset: i64 },
    /// An older epoch than the producer's current one: it has been fenced.
    InvalidProducerEpoch,
    /// A gap or reordering in the sequence numbers.
    OutOfOrderSequence,
}

/// Sequence numbers wrap from `i32::MAX` to 0 (Kafka's rule).
fn next_sequence(s: i32) -> i32 {
    if s == i32::MAX {
        0
    } else {
        s + 1
    }
}

/// Judges `batch` against a producer's state (`None`: never seen here).
pub fn judge(state: Option<&ProducerState>, batch: &BatchHeader) -> Verdict {
    if !batch.is_idempotent() {
        return Verdict::Append;
    }
    let Some(state) = state else {
        return if batch.base_sequence == 0 {
            Verdict::Append
        } else {
            Verdict::OutOfOrderSequence
        };
    };
    if batch.producer_epoch < state.epoch {
        return Verdict::InvalidProducerEpoch;
    }
    if batch.producer_epoch > state.epoch {
        return if batch.base_sequence == 0 {
            Verdict::Append
        } else {
            Verdict::OutOfOrderSequence
        };
    }
    let last_sequence = batch.base_sequence.wrapping_add(batch.last_offset_delta);
    if let Some(seen) = state
        .recent
        .iter()
        .find(|b| b.first_sequence == batch.base_sequence && b.last_sequence == last_sequence)
    {
        return Verdict::Duplicate {
            base_offset: seen.base_offset,
        };
    }
    match state.last_sequence() {
        Some(last) if batch.base_sequence == next_sequence(last) => Verdict::Append,
        None if batch.base_sequence == 0 => Verdict::Append,
        _ => Verdict::OutOfOrderSequence,
    }
}

/// Records an appended batch in the producer's state.
pub fn remember(state: &mut ProducerState, batch: &BatchHeader, base_offset: i64) {
    if batch.producer_epoch != state.epoch {
        state.epoch = batch.producer_epoch;
        state.recent.clear();
    }
    if state.recent.len() == PRODUCER_BATCHES_REMEMBERED {
        state.recent.remove(0);
    }
    state.recent.push(RememberedBatch {
        first_sequence: batch.base_sequence,
        last_sequence: batch.base_sequence.wrapping_add(batch.last_offset_delta),
        base_offset,
    });
}

/// Producer states of one partition, as the contract sees them.
pub type ProducerTable = HashMap<i64, ProducerState>;

/// Record batches being assembled into a block: their bytes back to back,
/// offsets assigned, the next offset, and the largest timestamp so far.
#[derive(Debug, Default)]
pub struct BatchRun {
    pub bytes: BytesMut,
    pub next_offset: i64,
    pub max_timestamp: i64,
    /// Who sent the records, run by run ([`crate::ledger::Block::senders`]).
    pub senders: Vec<Sender>,
}

impl BatchRun {
    pub fn new(next_offset: i64) -> Self {
        Self {
            bytes: BytesMut::new(),
            next_offset,
            max_timestamp: -1,
            senders: Vec::new(),
        }
    }

    /// Records that the records appended from offset `from` on were sent by
    /// `principal` of `organization` (nothing when none were appended; a
    /// run continues while the sender stays the same).
    pub fn attribute(&mut self, from: i64, principal: &str, organization: &str) {
        if from >= self.next_offset {
            return;
        }
        if let Some(last) = self.senders.last() {
            if last.principal == principal && last.organization == organization {
                return;
            }
        }
        self.senders.push(Sender {
            first_offset: from,
            principal: principal.to_owned(),
            organization: organization.to_owned(),
        });
    }
}

/// Applies one produce request's batches to a block being assembled, all
/// or nothing: each batch is judged against its producer's state, then
/// appended with its offsets (and `leader_epoch`) assigned, and remembered;
/// a batch that must be refused undoes the request's earlier ones. Returns
/// the offset of the request's first record (for a retried batch, where it
/// was first written), or `None` when it held no batch; the refusal
/// otherwise. `touched` gets every producer whose state changed.
pub fn append_request(
    producers: &mut ProducerTable,
    run: &mut BatchRun,
    batches: &[Batch],
    leader_epoch: i32,
    touched: &mut Vec<i64>,
) -> Result<Option<i64>, Verdict> {
    let rollback = (run.bytes.len(), run.next_offset, run.max_timestamp);
    let saved: Vec<(i64, Option<ProducerState>)> = batches
        .iter()
        .filter(|b| b.header.is_idempotent())
        .map(|b| (b.header.producer_id, producers.get(&b.header.producer_id).cloned()))
        .collect();
    let mut first = None;
    for batch in batches {
        let h = &batch.header;
        match judge(producers.get(&h.producer_id), h) {
            Verdict::Append => {}
            Verdict::Duplicate { base_offset } => {
                first.get_or_insert(base_offset);
                continue;
            }
            refused => {
                run.bytes.truncate(rollback.0);
                run.next_offset = rollback.1;
                run.max_timestamp = rollback.2;
                for (pid, state) in &saved {
                    match state {
                        Some(s) => producers.insert(*pid, s.clone()),
                        None => producers.remove(pid),
                    };
                }
                return Err(refused);
            }
        }
        let base = run.next_offset;
        let start = run.bytes.len();
        run.bytes.extend_from_slice(&batch.bytes);
        assign_offset(&mut run.bytes[start..], base, leader_epoch);
        run.next_offset = base + h.records_count as i64;
        run.max_timestamp = run.max_timestamp.max(h.max_timestamp);
        if h.is_idempotent() {
            remember(producers.entry(h.producer_id).or_default(), h, base);
            touched.push(h.producer_id);
        }
        first.get_or_insert(base);
    }
    Ok(first)
}

/// Request numbers one submitting replica may have in flight on one
/// partition: a request this far below the newest one executed is refused
/// as stale (its submitter retries it under a new number).
pub const REQUEST_WINDOW: u64 = 4096;

/// Which request numbers from one submitting replica a partition executed:
/// the highest, and a bitmap of the [`REQUEST_WINDOW`] below it. A request
/// ordered twice (re-proposed after a view change, say) takes effect once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestWindow {
    pub high: u64,
    bits: [u64; (REQUEST_WINDOW / 64) as usize],
}

impl Default for RequestWindow {
    fn default() -> Self {
        Self {
            high: 0,
            bits: [0; (REQUEST_WINDOW / 64) as usize],
        }
    }
}

/// What the window says of a request number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestVerdict {
    New,
    Duplicate,
    /// Too far below the newest to tell: refused, never executed.
    Stale,
}

impl RequestWindow {
    pub const BYTES: usize = 8 + (REQUEST_WINDOW / 8) as usize;

    fn bit(number: u64) -> (usize, u64) {
        let i = number % REQUEST_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    pub fn judge(&self, number: u64) -> RequestVerdict {
        if number > self.high {
            return RequestVerdict::New;
        }
        if self.high - number >= REQUEST_WINDOW {
            return RequestVerdict::Stale;
        }
        let (word, mask) = Self::bit(number);
        if self.bits[word] & mask != 0 {
            RequestVerdict::Duplicate
        } else {
            RequestVerdict::New
        }
    }

    /// Marks `number` executed (after [`RequestWindow::judge`] said `New`).
    pub fn record(&mut self, number: u64) {
        if number > self.high {
            if number - self.high >= REQUEST_WINDOW {
                self.bits = [0; (REQUEST_WINDOW / 64) as usize];
            } else {
                for n in self.high + 1..=number {
                    let (word, mask) = Self::bit(n);
                    self.bits[word] &= !mask;
                }
            }
            self.high = number;
        }
        let (word, mask) = Self::bit(number);
        self.bits[word] |= mask;
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::BYTES);
        out.extend_from_slice(&self.high.to_be_bytes());
        for w in &self.bits {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::BYTES {
            return None;
        }
        let word = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
        let mut w = Self {
            high: word(0)?,
            ..Default::default()
        };
        for (i, slot) in w.bits.iter_mut().enumerate() {
            *slot = word(8 + 8 * i)?;
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_protocol::records::{encode_batch, NewRecord, ProducerIds};

    fn header(epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let recs = vec![
            NewRecord {
                value: Some(b"v"),
                ..Default::default()
            };
            records
        ];
        let b = encode_batch(
            0,
            ProducerIds {
                producer_id: 9,
                producer_epoch: epoch,
                base_sequence: seq,
            },
            &recs,
        );
        BatchHeader::parse(&b).unwrap()
    }

    #[test]
    fn retried_batch_is_a_duplicate_with_its_original_offset() {
        let mut s = ProducerState::default();
        let first = header(0, 0, 3);
        assert_eq!(judge(None, &first), Verdict::Append);
        remember(&mut s, &first, 100);
        let second = header(0, 3, 2);
        assert_eq!(judge(Some(&s), &second), Verdict::Append);
        remember(&mut s, &second, 103);
        assert_eq!(judge(Some(&s), &first), Verdict::Duplicate { base_offset: 100 });
        assert_eq!(judge(Some(&s), &second), Verdict::Duplicate { base_offset: 103 });
    }

    #[test]
    fn gaps_old_epochs_and_fresh_epochs() {
        let mut s = ProducerState::default();
        remember(&mut s, &header(1, 0, 1), 0);
        assert_eq!(judge(Some(&s), &header(1, 2, 1)), Verdict::OutOfOrderSequence);
        assert_eq!(judge(Some(&s), &header(0, 1, 1)), Verdict::InvalidProducerEpoch);
        assert_eq!(judge(Some(&s), &header(2, 0, 1)), Verdict::Append);
        assert_eq!(judge(Some(&s), &header(2, 5, 1)), Verdict::OutOfOrderSequence);
        assert_eq!(judge(None, &header(0, 7, 1)), Verdict::OutOfOrderSequence);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerState::default();
        for i in 0..7 {
            remember(&mut s, &header(0, i, 1), i as i64);
        }
        assert_eq!(s.recent.len(), PRODUCER_BATCHES_REMEMBERED);
        assert_eq!(judge(Some(&s), &header(0, 6, 1)), Verdict::Duplicate { base_offset: 6 });
        assert_eq!(judge(Some(&s), &header(0, 0, 1)), Verdict::OutOfOrderSequence);
        assert_eq!(judge(Some(&s), &header(0, 7, 1)), Verdict::Append);
    }

    #[test]
    fn a_request_window_executes_each_number_once_and_refuses_the_stale() {
        let mut w = RequestWindow::default();
        let base = 7 << 40;
        for n in [base + 5, base + 1, base + 3] {
            assert_eq!(w.judge(n), RequestVerdict::New);
            w.record(n);
        }
        for n in [base + 5, base + 1, base + 3] {
            assert_eq!(w.judge(n), RequestVerdict::Duplicate);
        }
        assert_eq!(w.judge(base + 2), RequestVerdict::New, "a gap stays open");
        w.record(base + 5 + REQUEST_WINDOW);
        assert_eq!(w.judge(base + 5), RequestVerdict::Stale);
        assert_eq!(
            w.judge(base + 6),
            RequestVerdict::New,
            "a slot reused for a newer number is clear"
        );
        assert_eq!(w.judge(base + 5 + REQUEST_WINDOW), RequestVerdict::Duplicate);
        assert_eq!(RequestWindow::decode(&w.encode()), Some(w.clone()));
        // A jump past the whole window clears it.
        w.record(base + 100 * REQUEST_WINDOW);
        assert_eq!(w.judge(base + 100 * REQUEST_WINDOW - 1), RequestVerdict::New);
    }
}
