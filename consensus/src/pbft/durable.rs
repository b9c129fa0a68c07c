//! What a replica must find on disk after a crash, and how it comes back.
//!
//! A replica asks for a [`Durable`] record to be written before it sends
//! anything that depends on it: the pre-prepare it accepted (before its
//! PREPARE), the prepares that make it prepared (before its COMMIT), and
//! the view it moves to (before its VIEW-CHANGE). With those, a restarted
//! replica never contradicts what it said before the crash, and its
//! VIEW-CHANGE still carries every batch it prepared. What it executed is
//! the environment's ledger, handed back as [`Recovered`].

use std::collections::BTreeMap;

use super::message::{Digest, Message, PreparedCert, QuorumCert, SignedMessage};
use super::replica::{Config, Replica, ReplicaKeys};

/// One record of a replica's durable log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durable {
    /// The replica moved to `view` (still changing to it, or in it).
    View { view: u64, changing: bool },
    /// A pre-prepare the replica accepted (or, as primary, sent).
    PrePrepare(SignedMessage),
    /// The 2f prepares that, with the pre-prepare for (view, seq), make a
    /// prepared certificate.
    Prepared {
        seq: u64,
        view: u64,
        prepares: Vec<SignedMessage>,
    },
    /// The replica lost part of this log (a record it could not read back)
    /// and may have voted, before the loss, on any sequence number up to
    /// `through`: it votes on none of them again (see
    /// [`Recovered::amnesia`]). Kept until its low watermark passes it.
    Abstain { through: u64 },
}

/// What a restarting replica is given back.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The newest quorum certificate the environment holds (its stable
    /// checkpoint), if any.
    pub certified: Option<QuorumCert>,
    /// The state after each sequence number executed above that
    /// certificate, in order.
    pub executed: Vec<(u64, Digest)>,
    /// The durable log, oldest record first.
    pub records: Vec<Durable>,
    /// Some of this replica's durable log was lost (a record damaged on
    /// disk, or the whole log gone while the ledger remains), so the
    /// records above may miss votes it sent. It could not tell a vote it
    /// lost from one it never cast, so it might contradict itself: a
    /// second PREPARE or COMMIT for a sequence number it had voted on in
    /// the same view, or a VIEW-CHANGE without a batch it had prepared.
    /// Either would make it one of the f faulty replicas. Instead it
    /// abstains, as a replica in Castro and Liskov's proactive recovery
    /// does: no PREPARE, COMMIT or PRE-PREPARE for any sequence number up
    /// to its recovery point, and no VIEW-CHANGE until its low watermark
    /// reaches that point, meanwhile executing what the others commit
    /// (their COMMITs, or state transfer). The recovery point is what it
    /// executed plus the window: its low watermark before the loss was at
    /// most what its ledger holds (a checkpoint is stable only once it is
    /// executed, durably), and it never voted beyond a window above that.
    pub amnesia: bool,
}

impl Replica {
    /// A replica restarted from its durable log and its ledger.
    pub fn restore(config: Config, keys: ReplicaKeys, recovered: Recovered) -> Self {
        let mut r = Replica::new(config, keys);
        r.announcing = Some((0, r.config().retransmit_ms / 2));
        if let Some(cert) = recovered.certified {
            r.low = cert.seq;
            r.last_executed = cert.seq;
            r.last_applied = cert.seq;
            r.states.insert(cert.seq, cert.state);
            r.low_proof = cert.votes;
        }
        for (seq, state) in recovered.executed {
            if seq == r.last_applied + 1 {
                r.last_executed = seq;
                r.last_applied = seq;
                r.states.insert(seq, state);
            }
        }
        let mut pre_prepares: BTreeMap<(u64, u64), SignedMessage> = BTreeMap::new();
        let mut prepared: BTreeMap<u64, (u64, Vec<SignedMessage>)> = BTreeMap::new();
        for record in recovered.records {
            match record {
                Durable::View { view, changing } => {
                    if view > r.view || (view == r.view && !changing) {
                        r.view = view;
                        r.view_changing = changing;
                    }
                }
                Durable::PrePrepare(pp) => {
                    if let Some((view, seq, _)) = pp.slot() {
                        if seq > r.low {
                            pre_prepares.insert((view, seq), pp);
                        }
                    }
                }
                Durable::Prepared { seq, view, prepares } => {
                    if seq > r.low && prepared.get(&seq).is_none_or(|(v, _)| view > *v) {
                        prepared.insert(seq, (view, prepares));
                    }
                }
                Durable::Abstain { through } => {
                    if through > r.low {
                        r.abstain_through = r.abstain_through.max(through);
                    }
                }
            }
        }
        for (seq, (view, prepares)) in prepared {
            if let Some(pp) = pre_prepares.get(&(view, seq)) {
                r.prepared.insert(
                    seq,
                    PreparedCert {
                        pre_prepare: pp.clone(),
                        prepares,
                    },
                );
            }
        }
        if recovered.amnesia {
            r.abstain_through = r.abstain_through.max(r.last_executed.max(r.low) + r.config().window);
            tracing::warn!(
                cluster = r.config().cluster,
                through = r.abstain_through,
                "part of this replica's durable log was lost: it casts no vote up to its recovery point"
            );
        }
        // The current view's slots, with the votes we had sent (signing is
        // deterministic: the same message gets the same signature). Not
        // while abstaining: then a pre-prepare we logged may be one we
        // accepted without voting.
        let me = r.id();
        for ((view, seq), pp) in pre_prepares.range((r.view, 0)..=(r.view, u64::MAX)) {
            let (view, seq) = (*view, *seq);
            let Some((_, _, digest)) = pp.slot() else { continue };
            let prepare = r.sign(Message::Prepare { view, seq, digest });
            let commit = r.sign(Message::Commit { view, seq, digest });
            let prepared_here = r
                .prepared
                .get(&seq)
                .is_some_and(|c| c.pre_prepare.slot() == Some((view, seq, digest)));
            let votes = r.may_vote(seq);
            let slot = r.slots.entry(seq).or_default();
            slot.pre_prepare = Some(pp.clone());
            if pp.sender != me && votes {
                slot.prepares.insert(me, prepare);
            }
            if prepared_here && votes {
                slot.commits.insert(me, commit);
            }
            r.next_seq = r.next_seq.max(seq + 1);
        }
        r.next_seq = r.next_seq.max(r.last_executed.max(r.low) + 1);
        if r.view_changing && r.sends_view_changes() {
            // Our VIEW-CHANGE is rebuilt from what we hold now; retransmission sends it.
            let vc = r.sign(Message::ViewChange {
                new_view: r.view,
                stable_seq: r.low,
                checkpoint_proof: r.low_proof.clone(),
                prepared: r.prepared.values().cloned().collect(),
            });
            r.view_changes.entry(r.view).or_default().insert(me, vc.clone());
            r.my_view_change = Some(vc);
        }
        r
    }

    /// Everything of the durable log that still matters: what a compacted
    /// log must hold for [`Replica::restore`] to come back to this replica.
    pub fn durable_state(&self) -> Vec<Durable> {
        let mut out = vec![Durable::View {
            view: self.view,
            changing: self.view_changing,
        }];
        if let Some(through) = self.abstaining() {
            out.push(Durable::Abstain { through });
        }
        let mut written = std::collections::BTreeSet::new();
        for (seq, cert) in &self.prepared {
            if let Some((view, _, _)) = cert.pre_prepare.slot() {
                written.insert((view, *seq));
                out.push(Durable::PrePrepare(cert.pre_prepare.clone()));
                out.push(Durable::Prepared {
                    seq: *seq,
                    view,
                    prepares: cert.prepares.clone(),
                });
            }
        }
        for (seq, slot) in &self.slots {
            if let Some(pp) = &slot.pre_prepare {
                if pp.slot().is_some_and(|(v, _, _)| !written.contains(&(v, *seq))) {
                    out.push(Durable::PrePrepare(pp.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pbft::{public_key, Action, Event, Request, RequestId};
    use bytes::Bytes;
    use ring::signature::Ed25519KeyPair;

    fn config() -> Config {
        Config {
            cluster: 3,
            n: 4,
            window: 8,
            batch_bytes_max: 1 << 20,
            batch_delay_ms: 1,
            view_change_timeout_ms: 100,
            retransmit_ms: 1000,
            waiting_requests_max: 100,
        }
    }

    fn keys(i: u8) -> ReplicaKeys {
        let key = |i: u8| Ed25519KeyPair::from_seed_unchecked(&[i + 40; 32]).unwrap();
        ReplicaKeys {
            id: i,
            key: key(i),
            members: (0..4).map(|j| public_key(&key(j))).collect(),
        }
    }

    /// Runs four replicas in lockstep, delivering everything except
    /// COMMITs, so every replica prepares a batch and none commits it.
    /// Returns the replicas and each one's durable log.
    fn prepared_everywhere() -> (Vec<Replica>, Vec<Vec<Durable>>) {
        let mut replicas: Vec<Replica> = (0..4).map(|i| Replica::new(config(), keys(i))).collect();
        let mut disks = vec![Vec::new(); 4];
        let mut queue: Vec<(u8, Action)> = Vec::new();
        let request = Request {
            id: RequestId { origin: 0, number: 1 },
            payload: Bytes::from_static(b"records"),
        };
        for a in replicas[0].handle(Event::Request(request)) {
            queue.push((0, a));
        }
        for a in replicas[0].handle(Event::Tick { now_ms: 5 }) {
            queue.push((0, a));
        }
        while let Some((from, action)) = queue.pop() {
            match action {
                Action::Persist(d) => disks[from as usize].push(d),
                Action::Broadcast(m) if !matches!(m.message, crate::pbft::Message::Commit { .. }) => {
                    for to in (0..4u8).filter(|t| *t != from) {
                        for a in replicas[to as usize].handle(Event::Message(m.clone())) {
                            queue.push((to, a));
                        }
                    }
                }
                _ => {}
            }
        }
        (replicas, disks)
    }

    fn prepared_in_view_change(actions: &[Action]) -> Option<Vec<u64>> {
        actions.iter().find_map(|a| match a {
            Action::Broadcast(m) => match &m.message {
                crate::pbft::Message::ViewChange { prepared, .. } => Some(
                    prepared
                        .iter()
                        .filter_map(|p| p.pre_prepare.slot().map(|(_, s, _)| s))
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        })
    }

    #[test]
    fn a_restarted_replica_still_reports_what_it_prepared() {
        let (_, disks) = prepared_everywhere();
        assert!(disks[1].iter().any(|d| matches!(d, Durable::Prepared { seq: 1, .. })));
        // From the log as written, and from a compacted one.
        for records in [disks[1].clone(), {
            let r = Replica::restore(
                config(),
                keys(1),
                Recovered {
                    records: disks[1].clone(),
                    ..Default::default()
                },
            );
            r.durable_state()
        }] {
            let mut restored = Replica::restore(
                config(),
                keys(1),
                Recovered {
                    records,
                    ..Default::default()
                },
            );
            // It remembers the request only if relayed; make the view change happen by f + 1 peers asking.
            let mut out = restored.handle(Event::Tick { now_ms: 10 });
            out.extend(asked_for_view_one(&mut restored));
            assert_eq!(
                prepared_in_view_change(&out),
                Some(vec![1]),
                "the VIEW-CHANGE after a restart carries the batch prepared before it"
            );
        }
        // Without its log the same replica would have nothing to report.
        let mut amnesiac = Replica::new(config(), keys(1));
        let out = asked_for_view_one(&mut amnesiac);
        assert_eq!(prepared_in_view_change(&out), Some(vec![]));
    }

    /// f + 1 peers (2 and 3) ask `r` for view 1; what it does.
    fn asked_for_view_one(r: &mut Replica) -> Vec<Action> {
        let mut out = Vec::new();
        for peer in [2u8, 3] {
            let vc = crate::pbft::SignedMessage::sign(
                3,
                peer,
                &keys(peer).key,
                crate::pbft::Message::ViewChange {
                    new_view: 1,
                    stable_seq: 0,
                    checkpoint_proof: vec![],
                    prepared: vec![],
                },
            );
            out.extend(r.handle(Event::Message(vc)));
        }
        out
    }

    fn votes(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Broadcast(m) | Action::Send { message: m, .. } => match &m.message {
                    crate::pbft::Message::Prepare { .. } => Some("prepare"),
                    crate::pbft::Message::Commit { .. } => Some("commit"),
                    crate::pbft::Message::ViewChange { .. } => Some("view-change"),
                    crate::pbft::Message::PrePrepare { .. } => Some("pre-prepare"),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// A replica whose log lost the record of what it prepared cannot know
    /// what it voted: it abstains for every sequence number it may have
    /// voted on (no PREPARE, COMMIT, PRE-PREPARE or VIEW-CHANGE), and says
    /// so in its log, so that a restart keeps it abstaining.
    #[test]
    fn a_replica_that_lost_log_records_casts_no_vote_it_may_have_cast_before() {
        let (replicas, disks) = prepared_everywhere();
        // Its log lost the records of the batch it prepared.
        let kept: Vec<Durable> = disks[1]
            .iter()
            .filter(|d| matches!(d, Durable::View { .. }))
            .cloned()
            .collect();
        let mut amnesiac = Replica::restore(
            config(),
            keys(1),
            Recovered {
                records: kept.clone(),
                amnesia: true,
                ..Default::default()
            },
        );
        assert_eq!(amnesiac.abstaining(), Some(config().window));
        // An equivocating primary sends a different batch for sequence
        // number 1 than the one replica 1 prepared before the loss.
        assert!(replicas[0].slots.contains_key(&1));
        let other = crate::pbft::Batch {
            view: 0,
            requests: vec![Request {
                id: RequestId { origin: 0, number: 9 },
                payload: Bytes::from_static(b"other records"),
            }],
        };
        let conflicting = crate::pbft::SignedMessage::sign(
            3,
            0,
            &keys(0).key,
            crate::pbft::Message::PrePrepare {
                view: 0,
                seq: 1,
                digest: other.digest(),
                batch: other,
            },
        );
        // Not knowing of the loss, the replica would sign a second,
        // conflicting PREPARE for (view 0, seq 1): Byzantine behaviour.
        let mut unaware = Replica::restore(
            config(),
            keys(1),
            Recovered {
                records: kept.clone(),
                ..Default::default()
            },
        );
        assert_eq!(votes(&unaware.handle(Event::Message(conflicting.clone()))), ["prepare"]);
        // Recovering from the loss, it does not.
        let out = amnesiac.handle(Event::Message(conflicting));
        assert!(votes(&out).is_empty(), "{:?}", votes(&out));
        // f + 1 peers ask for a view change: it follows, without a VIEW-CHANGE
        // that would leave out the batch it prepared.
        let out = asked_for_view_one(&mut amnesiac);
        assert!(amnesiac.is_view_changing() && amnesiac.view() == 1);
        assert!(votes(&out).is_empty(), "{:?}", votes(&out));
        // Its compacted log says it abstains, and a restart from it does too.
        let state = amnesiac.durable_state();
        assert!(state.contains(&Durable::Abstain {
            through: config().window
        }));
        let restarted = Replica::restore(
            config(),
            keys(1),
            Recovered {
                records: state,
                ..Default::default()
            },
        );
        assert_eq!(restarted.abstaining(), Some(config().window));
        // The same replica with its whole log votes as before.
        let whole = Replica::restore(
            config(),
            keys(1),
            Recovered {
                records: disks[1].clone(),
                ..Default::default()
            },
        );
        assert_eq!(whole.abstaining(), None);
    }

    #[test]
    fn a_restarted_primary_does_not_reuse_a_sequence_number() {
        let (_, disks) = prepared_everywhere();
        let mut restored = Replica::restore(
            config(),
            keys(0),
            Recovered {
                records: disks[0].clone(),
                ..Default::default()
            },
        );
        let request = Request {
            id: RequestId { origin: 0, number: 2 },
            payload: Bytes::from_static(b"more"),
        };
        let mut out = restored.handle(Event::Request(request));
        out.extend(restored.handle(Event::Tick { now_ms: 50 }));
        let before = disks[0].iter().find_map(|d| match d {
            Durable::PrePrepare(pp) => pp.slot(),
            _ => None,
        });
        let sent: Vec<(u64, crate::pbft::Digest, usize)> = out
            .iter()
            .filter_map(|a| match a {
                Action::Broadcast(m) => match &m.message {
                    crate::pbft::Message::PrePrepare { seq, digest, batch, .. } => {
                        Some((*seq, *digest, batch.requests.len()))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        // Sequence number 1 is only ever sent again as it was; the new request gets 2.
        for (seq, digest, _) in &sent {
            if *seq == 1 {
                assert_eq!(Some((0, 1, *digest)), before);
            }
        }
        assert!(sent
            .iter()
            .any(|(seq, digest, n)| *seq == 2 && *n == 1 && Some(*digest) != before.map(|b| b.2)));
    }

    /// The PRE-PREPAREs among `actions`: sequence number, and the peer
    /// sent to (`None`: broadcast).
    fn pre_prepared(actions: &[Action]) -> Vec<(u64, Option<u8>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Broadcast(m) => match &m.message {
                    crate::pbft::Message::PrePrepare { seq, .. } => Some((*seq, None)),
                    _ => None,
                },
                Action::Send { to, message } => match &message.message {
                    crate::pbft::Message::PrePrepare { seq, .. } => Some((*seq, Some(*to))),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_primary_sends_no_batch_again_to_a_backed_up_peer_and_orders_nothing_new_past_f_of_them() {
        let config = Config {
            view_change_timeout_ms: 60_000,
            retransmit_ms: 100,
            ..config()
        };
        let mut primary = Replica::new(config, keys(0));
        let request = |number| Request {
            id: RequestId { origin: 0, number },
            payload: Bytes::from_static(b"records"),
        };
        let backlog = |peers: &[u8]| Event::Backlog(peers.iter().copied().collect());
        // Slot 1 is pre-prepared; nobody answers.
        let out = primary.handle(Event::Request(request(1)));
        assert_eq!(pre_prepared(&out), vec![(1, None)]);
        // One peer backed up (f = 1): slot 1 goes again, to the others only.
        let mut out = primary.handle(backlog(&[2]));
        for now_ms in [10, 150] {
            out.extend(primary.handle(Event::Tick { now_ms }));
        }
        let again = pre_prepared(&out);
        assert!(
            again.contains(&(1, Some(1))) && again.contains(&(1, Some(3))),
            "{again:?}"
        );
        assert!(!again.iter().any(|(_, to)| *to == Some(2) || to.is_none()), "{again:?}");
        // Two backed up: nothing new is ordered; slot 1 goes again to the
        // one peer that is not.
        let mut out = primary.handle(backlog(&[2, 3]));
        out.extend(primary.handle(Event::Request(request(2))));
        for now_ms in [300, 450, 600] {
            out.extend(primary.handle(Event::Tick { now_ms }));
        }
        let sent = pre_prepared(&out);
        assert!(!sent.is_empty() && sent.iter().all(|s| *s == (1, Some(1))), "{sent:?}");
        // Relieved: the waiting request is ordered at once, in slot 2.
        let out = primary.handle(backlog(&[]));
        assert_eq!(pre_prepared(&out), vec![(2, None)]);
    }
}
