//! View change: VIEW-CHANGE with checkpoint proof and prepared
//! certificates, NEW-VIEW built by the new primary and recomputed by every
//! replica before it is accepted.

use std::collections::{BTreeMap, BTreeSet};

use super::message::{Batch, Message, PreparedCert, ReplicaId, RequestId, SignedMessage};
use super::replica::{Action, Config, Replica};
use super::Durable;

impl Replica {
    /// Stops taking part in the current view and asks for `new_view`.
    pub(super) fn start_view_change(&mut self, new_view: u64, out: &mut Vec<Action>) {
        if new_view <= self.view && self.view_changing {
            return;
        }
        self.view = new_view;
        self.view_changing = true;
        self.resend_requests_ms = self.now_ms + self.config.view_change_timeout_ms;
        self.new_view = None;
        self.backoff = self.backoff.saturating_add(1);
        // The timer for giving up on this view starts only once 2f + 1
        // replicas want it (below): alone, a replica waits for the others.
        self.deadline_ms = None;
        out.push(Action::Persist(Durable::View {
            view: new_view,
            changing: true,
        }));
        self.my_view_change = None;
        if self.sends_view_changes() {
            self.send_view_change(out);
        }
    }

    /// Our VIEW-CHANGE for the view we are changing to.
    pub(super) fn send_view_change(&mut self, out: &mut Vec<Action>) {
        let vc = self.sign(Message::ViewChange {
            new_view: self.view,
            stable_seq: self.low,
            checkpoint_proof: self.low_proof.clone(),
            prepared: self.prepared_certs(),
        });
        self.my_view_change = Some(vc.clone());
        out.push(Action::Broadcast(vc.clone()));
        self.on_message(vc, out);
    }

    /// For every sequence number above the low watermark that this replica
    /// prepared in any view, the certificate from the latest such view.
    fn prepared_certs(&self) -> Vec<PreparedCert> {
        self.prepared.range(self.low + 1..).map(|(_, c)| c.clone()).collect()
    }

    pub(super) fn on_view_change(&mut self, m: SignedMessage, new_view: u64, out: &mut Vec<Action>) {
        if new_view < self.view || (new_view == self.view && !self.view_changing) || !self.valid_view_change(&m) {
            return;
        }
        // First VIEW-CHANGE per sender and view wins: a replica sending
        // conflicting ones cannot make us count it twice.
        self.view_changes
            .entry(new_view)
            .or_default()
            .entry(m.sender)
            .or_insert(m);
        // f + 1 replicas asking for later views: at least one is honest, so
        // join the smallest such view rather than wait for our own timer.
        if !self.view_changing || new_view > self.view {
            let mut later: BTreeMap<ReplicaId, u64> = BTreeMap::new();
            for (v, votes) in self.view_changes.range(self.view + u64::from(!self.view_changing)..) {
                for sender in votes.keys() {
                    later.entry(*sender).or_insert(*v);
                }
            }
            if later.len() > self.config.f() {
                if let Some(v) = later.values().min().copied() {
                    if v > self.view || !self.view_changing {
                        self.start_view_change(v.max(self.view + u64::from(!self.view_changing)), out);
                    }
                }
            }
        }
        let v = self.view;
        let wanted = self
            .view_changes
            .get(&v)
            .is_some_and(|votes| votes.len() >= self.config.quorum());
        if self.view_changing && wanted && self.deadline_ms.is_none() {
            self.deadline_ms = Some(self.now_ms + self.timeout());
        }
        // The new primary starts the view once 2f + 1 (its own included) agree.
        let ready = self.view_changing
            && self.primary(v) == self.keys.id
            && self
                .view_changes
                .get(&v)
                .is_some_and(|votes| votes.len() >= self.config.quorum() && votes.contains_key(&self.keys.id));
        if !ready {
            return;
        }
        let view_changes: Vec<SignedMessage> = self.view_changes[&v]
            .values()
            .take(self.config.quorum())
            .cloned()
            .collect();
        let (_, proposals) = new_view_proposals(&self.config, v, &view_changes);
        let pre_prepares: Vec<SignedMessage> = proposals
            .into_iter()
            .map(|(seq, batch)| {
                self.sign(Message::PrePrepare {
                    view: v,
                    seq,
                    digest: batch.digest(),
                    batch,
                })
            })
            .collect();
        for pp in &pre_prepares {
            out.push(Action::Persist(Durable::PrePrepare(pp.clone())));
        }
        let nv = self.sign(Message::NewView {
            view: v,
            view_changes,
            pre_prepares,
        });
        out.push(Action::Broadcast(nv.clone()));
        self.on_message(nv, out);
    }

    /// Checks a VIEW-CHANGE's checkpoint proof and prepared certificates.
    fn valid_view_change(&self, m: &SignedMessage) -> bool {
        let Message::ViewChange {
            new_view,
            stable_seq,
            checkpoint_proof,
            prepared,
        } = &m.message
        else {
            return false;
        };
        if *stable_seq > 0 {
            let Some(Message::Checkpoint { seq, .. }) = checkpoint_proof.first().map(|c| &c.message) else {
                return false;
            };
            let senders: BTreeSet<ReplicaId> = checkpoint_proof.iter().map(|c| c.sender).collect();
            let sound = *seq == *stable_seq
                && checkpoint_proof
                    .iter()
                    .all(|c| c.message == checkpoint_proof[0].message && self.valid(c));
            if !sound || senders.len() < self.config.quorum() {
                return false;
            }
        }
        prepared.iter().all(|p| {
            let Some((view, seq, d)) = p.pre_prepare.slot() else {
                return false;
            };
            let senders: BTreeSet<ReplicaId> = p.prepares.iter().map(|x| x.sender).collect();
            matches!(p.pre_prepare.message, Message::PrePrepare { .. })
                && view < *new_view
                && seq > *stable_seq
                && p.pre_prepare.sender == self.primary(view)
                && self.valid(&p.pre_prepare)
                && senders.len() >= 2 * self.config.f()
                && !senders.contains(&self.primary(view))
                && p.prepares.iter().all(|x| {
                    matches!(x.message, Message::Prepare { .. }) && x.slot() == Some((view, seq, d)) && self.valid(x)
                })
        })
    }

    pub(super) fn on_new_view(
        &mut self,
        m: &SignedMessage,
        view: u64,
        view_changes: &[SignedMessage],
        pre_prepares: &[SignedMessage],
        out: &mut Vec<Action>,
    ) {
        let sender = m.sender;
        if view < self.view || (view == self.view && !self.view_changing) || sender != self.primary(view) {
            return;
        }
        // 2f + 1 valid VIEW-CHANGEs for this view from distinct replicas…
        let senders: BTreeSet<ReplicaId> = view_changes.iter().map(|v| v.sender).collect();
        let valid = view_changes.iter().all(|vc| {
            matches!(vc.message, Message::ViewChange { new_view, .. } if new_view == view)
                && self.valid(vc)
                && self.valid_view_change(vc)
        });
        if !valid || senders.len() < self.config.quorum() || senders.len() != view_changes.len() {
            return;
        }
        // …and exactly the pre-prepares they imply, signed by the new primary.
        let (min_s, proposals) = new_view_proposals(&self.config, view, view_changes);
        let matches = pre_prepares.len() == proposals.len()
            && pre_prepares.iter().zip(&proposals).all(|(pp, (seq, batch))| {
                pp.sender == sender
                    && self.valid(pp)
                    && matches!(&pp.message, Message::PrePrepare { view: v, seq: s, batch: b, .. } if *v == view && s == seq && b == batch)
            });
        if !matches {
            return;
        }
        // The VIEW-CHANGE that proved min_s carries that checkpoint's proof.
        let proof = view_changes
            .iter()
            .find_map(|vc| match &vc.message {
                Message::ViewChange {
                    stable_seq,
                    checkpoint_proof,
                    ..
                } if *stable_seq == min_s => Some(checkpoint_proof.clone()),
                _ => None,
            })
            .unwrap_or_default();
        self.new_view = Some(m.clone());
        self.enter_view(view, min_s, proof, pre_prepares, out);
    }

    fn enter_view(
        &mut self,
        view: u64,
        min_s: u64,
        min_s_proof: Vec<crate::pbft::SignedMessage>,
        pre_prepares: &[SignedMessage],
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Persist(Durable::View { view, changing: false }));
        self.view = view;
        self.view_changing = false;
        self.my_view_change = None;
        self.deadline_ms = None;
        self.view_changes = self.view_changes.split_off(&(view + 1));
        // The new view re-proposes everything prepared above min_s; our
        // votes from older views no longer count.
        self.slots.retain(|seq, _| *seq <= self.last_executed);
        if min_s > self.low && self.last_applied >= min_s {
            // We hold that state: the checkpoint is stable for us too.
            self.stabilize(min_s, min_s_proof, out);
        }
        let max_s = pre_prepares
            .iter()
            .filter_map(|p| p.slot())
            .map(|(_, s, _)| s)
            .max()
            .unwrap_or(min_s);
        self.next_seq = max_s.max(self.last_executed).max(self.low) + 1;
        // Whatever was pending belongs to the old view. The new primary
        // orders what it saw that has not executed and is not re-proposed.
        self.pending.clear();
        self.pending_bytes = 0;
        self.oldest_pending_ms = None;
        if self.primary(view) == self.keys.id {
            let proposed: BTreeSet<RequestId> = pre_prepares
                .iter()
                .filter_map(|p| match &p.message {
                    Message::PrePrepare { batch, .. } => Some(batch.requests.iter().map(|r| r.id)),
                    _ => None,
                })
                .flatten()
                .collect();
            let waiting: Vec<_> = self
                .waiting
                .values()
                .filter(|w| !proposed.contains(&w.request.id))
                .map(|w| w.request.clone())
                .collect();
            for r in waiting {
                self.enqueue(r);
            }
        } else {
            // Our own requests go to the new primary.
            let to = self.primary(view);
            for r in self.own_waiting() {
                let message = self.sign(Message::Request(r));
                out.push(Action::Send { to, message });
            }
        }
        if !self.waiting.is_empty() {
            self.arm_timer();
        }
        for pp in pre_prepares {
            let Some((_, seq, d)) = pp.slot() else { continue };
            if seq > self.last_executed {
                self.on_message(pp.clone(), out);
                continue;
            }
            // Already executed here: still vote for it in the new view, so
            // replicas that have not executed it can reach a quorum. Safe:
            // we committed exactly this digest at this sequence number.
            let executed_same = self
                .slots
                .get(&seq)
                .and_then(|s| s.pre_prepare.as_ref())
                .is_some_and(|old| old.slot().is_some_and(|(_, _, od)| od == d));
            if executed_same && self.may_vote(seq) {
                if let Some(slot) = self.slots.get_mut(&seq) {
                    slot.pre_prepare = Some(pp.clone());
                    slot.prepares.clear();
                    slot.commits.clear();
                }
                if self.primary(view) != self.keys.id {
                    self.broadcast(Message::Prepare { view, seq, digest: d }, out);
                }
                self.broadcast(Message::Commit { view, seq, digest: d }, out);
            }
        }
        self.replay_held(out);
        self.cut_batches(out, true);
    }
}

/// What the primary of `view` proposes, computed from 2f + 1 VIEW-CHANGEs
/// the same way by every replica: the highest stable checkpoint among them
/// (`min_s`), then for each sequence number up to the highest prepared one,
/// the batch prepared in the latest view, or an empty batch of `view`.
pub(super) fn new_view_proposals(
    config: &Config,
    view: u64,
    view_changes: &[SignedMessage],
) -> (u64, Vec<(u64, Batch)>) {
    let mut min_s = 0;
    let mut best: BTreeMap<u64, (u64, &Batch)> = BTreeMap::new();
    for vc in view_changes {
        let Message::ViewChange {
            stable_seq, prepared, ..
        } = &vc.message
        else {
            continue;
        };
        min_s = min_s.max(*stable_seq);
        for p in prepared {
            let (Some((v, seq, _)), Message::PrePrepare { batch, .. }) = (p.pre_prepare.slot(), &p.pre_prepare.message)
            else {
                continue;
            };
            if best.get(&seq).is_none_or(|(bv, _)| v > *bv) {
                best.insert(seq, (v, batch));
            }
        }
    }
    let max_s = best.keys().next_back().copied().unwrap_or(min_s).max(min_s);
    // Never propose past the window the new view starts with.
    let max_s = max_s.min(min_s + config.window);
    let proposals = (min_s + 1..=max_s)
        .map(|seq| {
            let batch = best.get(&seq).map(|(_, b)| (*b).clone()).unwrap_or(Batch {
                view,
                requests: Vec::new(),
            });
            (seq, batch)
        })
        .collect();
    (min_s, proposals)
}
