//! The consumer-group coordinator (Kafka's classic protocol).
//!
//! Membership is soft state, as in Kafka: members join, the coordinator waits
//! for every known member to rejoin (or for the rebalance timeout), picks a
//! protocol and a leader, the leader computes assignments and hands them
//! over in SyncGroup, and heartbeats keep sessions alive. Committed offsets
//! are *not* soft: they are receipts on the partition ledger (see
//! `api::offset_commit`).
//!
//! State lives behind one `std` mutex, never held across an await: a handler
//! changes state and, when it has to wait (JoinGroup, a follower's
//! SyncGroup), parks a oneshot sender in the member and awaits the receiver.
//! Timers (rebalance deadline, session expiry) are tokio tasks that take the
//! same lock; a generation counter makes stale timers harmless.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::BrokerConfig;
use crate::shutdown::ShutdownSignal;

/// How often expired sessions are looked for.
const SESSION_SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Groups per coordinator and members per group, bounded against abuse.
pub const GROUPS_MAX: usize = 100_000;
pub const MEMBERS_PER_GROUP_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// What a JoinGroup waits for.
#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members and their metadata.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// What a SyncGroup waits for.
#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// A JoinGroup request, as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new member must first be told its id (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out by MEMBER_ID_REQUIRED, not joined yet.
    pending: HashMap<String, Instant>,
    /// Bumped every time a rebalance is scheduled; stale timers compare it.
    rebalance_epoch: u64,
    /// A new group waits this long for more members (group.initial.rebalance.delay.ms).
    initial_delay_until: Option<Instant>,
    rebalance_deadline: Instant,
}

impl Group {
    fn new() -> Self {
        Self {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_epoch: 0,
            initial_delay_until: None,
            rebalance_deadline: Instant::now(),
        }
    }

    fn assignment_of(&self, member_id: &str) -> Bytes {
        self.members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default()
    }

    fn all_rejoined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// The protocol every member supports, in the leader's (first member's)
    /// order of preference.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .cloned()
    }
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

struct Settings {
    initial_delay: Duration,
    session_min_ms: i32,
    session_max_ms: i32,
}

struct Inner {
    groups: Mutex<HashMap<String, Group>>,
    settings: Settings,
}

/// The coordinator handle; cheap to clone.
#[derive(Clone)]
pub struct GroupCoordinator {
    inner: Arc<Inner>,
    sweeper: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn e(err: ResponseError) -> i16 {
    err.code()
}

impl GroupCoordinator {
    pub fn new(config: &BrokerConfig, shutdown: ShutdownSignal) -> Self {
        let inner = Arc::new(Inner {
            groups: Mutex::new(HashMap::new()),
            settings: Settings {
                initial_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms.max(0) as u64),
                session_min_ms: config.group_min_session_timeout_ms,
                session_max_ms: config.group_max_session_timeout_ms,
            },
        });
        let sweeper = tokio::spawn(sweep_sessions(Arc::downgrade(&inner), shutdown));
        Self {
            inner,
            sweeper: Arc::new(Mutex::new(Some(sweeper))),
        }
    }

    /// Stops the session sweeper.
    pub fn stop(&self) {
        if let Some(h) = self.sweeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.inner.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn join(&self, req: JoinRequest) -> JoinOutcome {
        let rx = match self.start_join(req) {
            Ok(rx) => rx,
            Err(outcome) => return *outcome,
        };
        rx.await.unwrap_or(JoinOutcome {
            error: e(ResponseError::CoordinatorNotAvailable),
            ..Default::default()
        })
    }

    /// Registers a join; `Err` is an immediate answer.
    fn start_join(&self, req: JoinRequest) -> Result<oneshot::Receiver<JoinOutcome>, Box<JoinOutcome>> {
        let fail = |error: ResponseError| JoinOutcome {
            error: error.code(),
            member_id: req.member_id.clone(),
            ..Default::default()
        };
        let s = &self.inner.settings;
        if req.group_id.is_empty() {
            return Err(Box::new(fail(ResponseError::InvalidGroupId)));
        }
        if req.session_timeout_ms < s.session_min_ms || req.session_timeout_ms > s.session_max_ms {
            return Err(Box::new(fail(ResponseError::InvalidSessionTimeout)));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(Box::new(fail(ResponseError::InconsistentGroupProtocol)));
        }
        let mut groups = self.lock();
        if !groups.contains_key(&req.group_id) && groups.len() >= GROUPS_MAX {
            return Err(Box::new(fail(ResponseError::CoordinatorNotAvailable)));
        }
        let group = groups.entry(req.group_id.clone()).or_insert_with(Group::new);
        if let Some(pt) = &group.protocol_type {
            if !group.members.is_empty() && pt != &req.protocol_type {
                return Err(Box::new(fail(ResponseError::InconsistentGroupProtocol)));
            }
        }
        if !group.members.is_empty()
            && !req.protocols.iter().any(|(n, _)| {
                group
                    .members
                    .values()
                    .all(|m| m.protocols.iter().any(|(mn, _)| mn == n))
            })
        {
            return Err(Box::new(fail(ResponseError::InconsistentGroupProtocol)));
        }
        let now = Instant::now();
        let member_id = if req.member_id.is_empty() {
            let id = format!(
                "{}-{}",
                if req.client_id.is_empty() {
                    "member"
                } else {
                    &req.client_id
                },
                new_member_suffix()
            );
            if req.require_known_member_id {
                group.pending.insert(id.clone(), now);
                return Err(Box::new(JoinOutcome {
                    error: e(ResponseError::MemberIdRequired),
                    member_id: id,
                    ..Default::default()
                }));
            }
            id
        } else {
            if !group.members.contains_key(&req.member_id) && group.pending.remove(&req.member_id).is_none() {
                return Err(Box::new(fail(ResponseError::UnknownMemberId)));
            }
            req.member_id.clone()
        };
        if !group.members.contains_key(&member_id) && group.members.len() >= MEMBERS_PER_GROUP_MAX {
            return Err(Box::new(fail(ResponseError::GroupMaxSizeReached)));
        }
        let (tx, rx) = oneshot::channel();
        let member = group.members.entry(member_id.clone()).or_insert_with(|| Member {
            group_instance_id: None,
            client_id: String::new(),
            client_host: String::new(),
            session_timeout: Duration::ZERO,
            rebalance_timeout: Duration::ZERO,
            protocols: Vec::new(),
            assignment: Bytes::new(),
            last_seen: now,
            join_waiter: None,
            sync_waiter: None,
        });
        let changed = member.protocols != req.protocols;
        member.group_instance_id = req.group_instance_id.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64);
        member.protocols = req.protocols.clone();
        member.last_seen = now;
        member.join_waiter = Some(tx);
        group.protocol_type = Some(req.protocol_type.clone());

        let is_leader = group.leader.as_deref() == Some(member_id.as_str());
        match group.state {
            GroupState::Stable if !changed && !is_leader => {
                // A follower rejoining with nothing new: hand back the
                // current generation without disturbing the others.
                let outcome = join_outcome(group, &member_id);
                if let Some(w) = group.members.get_mut(&member_id).and_then(|m| m.join_waiter.take()) {
                    let _ = w.send(outcome);
                }
            }
            GroupState::PreparingRebalance => {}
            _ => self.prepare_rebalance(&req.group_id, group),
        }
        self.try_complete_join(&req.group_id, group, false);
        Ok(rx)
    }

    /// Moves a group to PreparingRebalance and arms its deadline timer.
    fn prepare_rebalance(&self, group_id: &str, group: &mut Group) {
        let now = Instant::now();
        if group.state == GroupState::CompletingRebalance {
            for m in group.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncOutcome {
                        error: e(ResponseError::RebalanceInProgress),
                        ..Default::default()
                    });
                }
            }
        }
        let timeout = group
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        group.initial_delay_until = if group.state == GroupState::Empty && group.generation == 0 {
            Some(now + self.inner.settings.initial_delay.min(timeout))
        } else {
            None
        };
        group.state = GroupState::PreparingRebalance;
        group.rebalance_epoch += 1;
        group.rebalance_deadline = now + timeout;
        self.arm_timer(group_id, group.rebalance_epoch, group.initial_delay_until);
        self.arm_timer(group_id, group.rebalance_epoch, Some(group.rebalance_deadline));
    }

    fn arm_timer(&self, group_id: &str, epoch: u64, at: Option<Instant>) {
        let Some(at) = at else { return };
        let me = self.clone();
        let group_id = group_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut groups = me.lock();
            if let Some(group) = groups.get_mut(&group_id) {
                if group.rebalance_epoch == epoch && group.state == GroupState::PreparingRebalance {
                    let force = Instant::now() >= group.rebalance_deadline;
                    me.try_complete_join(&group_id, group, force);
                }
            }
        });
    }

    /// Completes the join phase when every member has rejoined (and a new
    /// group's initial delay is over), or when forced at the deadline, in
    /// which case members that did not rejoin are dropped.
    fn try_complete_join(&self, _group_id: &str, group: &mut Group, force: bool) {
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        let now = Instant::now();
        let delay_over = group.initial_delay_until.is_none_or(|t| now >= t);
        if !(force || (group.all_rejoined() && delay_over)) {
            return;
        }
        group.members.retain(|_, m| m.join_waiter.is_some());
        group.generation += 1;
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.leader = None;
            group.protocol = None;
            return;
        }
        if group.leader.as_ref().is_none_or(|l| !group.members.contains_key(l)) {
            group.leader = group.members.keys().next().cloned();
        }
        group.protocol = group.select_protocol();
        group.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let outcome = join_outcome(group, &id);
            if let Some(m) = group.members.get_mut(&id) {
                m.last_seen = now;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(outcome);
                }
            }
        }
    }

    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let rx = {
            let mut groups = self.lock();
            let fail = |err: ResponseError| SyncOutcome {
                error: err.code(),
                ..Default::default()
            };
            let Some(group) = groups.get_mut(group_id) else {
                return fail(ResponseError::UnknownMemberId);
            };
            if !group.members.contains_key(member_id) {
                return fail(ResponseError::UnknownMemberId);
            }
            if generation != group.generation {
                return fail(ResponseError::IllegalGeneration);
            }
            let ok = |assignment: Bytes, g: &Group| SyncOutcome {
                error: 0,
                protocol_type: g.protocol_type.clone(),
                protocol: g.protocol.clone(),
                assignment,
            };
            match group.state {
                GroupState::PreparingRebalance | GroupState::Empty => return fail(ResponseError::RebalanceInProgress),
                GroupState::Stable => {
                    return ok(group.assignment_of(member_id), group);
                }
                GroupState::CompletingRebalance => {}
            }
            if let Some(m) = group.members.get_mut(member_id) {
                m.last_seen = Instant::now();
            }
            if group.leader.as_deref() == Some(member_id) {
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                let protocol_type = group.protocol_type.clone();
                let protocol = group.protocol.clone();
                for (id, m) in group.members.iter_mut() {
                    m.assignment = given.remove(id).unwrap_or_default();
                    if id != member_id {
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncOutcome {
                                error: 0,
                                protocol_type: protocol_type.clone(),
                                protocol: protocol.clone(),
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                }
                group.state = GroupState::Stable;
                return ok(group.assignment_of(member_id), group);
            }
            let (tx, rx) = oneshot::channel();
            if let Some(m) = group.members.get_mut(member_id) {
                m.sync_waiter = Some(tx);
            }
            rx
        };
        rx.await.unwrap_or(SyncOutcome {
            error: e(ResponseError::RebalanceInProgress),
            ..Default::default()
        })
    }

    pub fn heartbeat(&self, group_id: &str, generation: i32, member_id: &str) -> i16 {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return e(ResponseError::UnknownMemberId);
        };
        let Some(m) = group.members.get_mut(member_id) else {
            return e(ResponseError::UnknownMemberId);
        };
        m.last_seen = Instant::now();
        if generation != group.generation {
            return e(ResponseError::IllegalGeneration);
        }
        match group.state {
            GroupState::PreparingRebalance => e(ResponseError::RebalanceInProgress),
            _ => 0,
        }
    }

    /// Removes members; returns an error code per member.
    pub fn leave(&self, group_id: &str, members: &[String]) -> Vec<i16> {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return members.iter().map(|_| e(ResponseError::UnknownMemberId)).collect();
        };
        let codes: Vec<i16> = members
            .iter()
            .map(|id| match group.members.remove(id) {
                Some(m) => {
                    if let Some(w) = m.join_waiter {
                        let _ = w.send(JoinOutcome {
                            error: e(ResponseError::UnknownMemberId),
                            ..Default::default()
                        });
                    }
                    0
                }
                None => e(ResponseError::UnknownMemberId),
            })
            .collect();
        if codes.contains(&0) {
            self.after_departure(group_id, group);
        }
        codes
    }

    /// After members left or expired: rebalance the rest, or empty the group.
    fn after_departure(&self, group_id: &str, group: &mut Group) {
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.leader = None;
            group.protocol = None;
            group.generation += 1;
            group.rebalance_epoch += 1;
            return;
        }
        match group.state {
            GroupState::PreparingRebalance => self.try_complete_join(group_id, group, false),
            _ => self.prepare_rebalance(group_id, group),
        }
    }

    /// Checks an offset commit's generation and member. Generation -1 with
    /// no member id is a "simple" commit, allowed while the group has no
    /// members (consumers using assign() rather than subscribe()).
    pub fn check_commit(&self, group_id: &str, generation: i32, member_id: &str) -> i16 {
        let groups = self.lock();
        let group = groups.get(group_id);
        if generation < 0 && member_id.is_empty() {
            return match group {
                Some(g) if !g.members.is_empty() => e(ResponseError::IllegalGeneration),
                _ => 0,
            };
        }
        let Some(group) = group else {
            return e(ResponseError::UnknownMemberId);
        };
        if !group.members.contains_key(member_id) {
            return e(ResponseError::UnknownMemberId);
        }
        if generation != group.generation {
            return e(ResponseError::IllegalGeneration);
        }
        if group.state == GroupState::PreparingRebalance {
            return e(ResponseError::RebalanceInProgress);
        }
        0
    }

    /// Groups with live state: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        self.lock()
            .iter()
            .map(|(id, g)| (id.clone(), g.protocol_type.clone().unwrap_or_default(), g.state.name()))
            .collect()
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.lock();
        let g = groups.get(group_id)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupDescription {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            members: g
                .members
                .iter()
                .map(|(id, m)| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default();
                    (
                        id.clone(),
                        m.group_instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        metadata,
                        m.assignment.clone(),
                    )
                })
                .collect(),
            protocol,
        })
    }

    /// Forgets a group that has no members; NON_EMPTY_GROUP otherwise.
    pub fn remove_if_empty(&self, group_id: &str) -> Result<bool, i16> {
        let mut groups = self.lock();
        match groups.get(group_id) {
            Some(g) if !g.members.is_empty() => Err(e(ResponseError::NonEmptyGroup)),
            Some(_) => {
                groups.remove(group_id);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops members whose session expired; returns how many.
    fn expire_sessions(&self) -> usize {
        let now = Instant::now();
        let mut groups = self.lock();
        let mut expired = 0;
        let ids: Vec<String> = groups.keys().cloned().collect();
        for id in ids {
            let Some(group) = groups.get_mut(&id) else {
                continue;
            };
            group
                .pending
                .retain(|_, since| now.duration_since(*since) < Duration::from_secs(300));
            // A member parked in JoinGroup is waiting on us, not late.
            let before = group.members.len();
            group
                .members
                .retain(|_, m| m.join_waiter.is_some() || now.duration_since(m.last_seen) < m.session_timeout);
            let gone = before - group.members.len();
            if gone > 0 {
                tracing::info!(group = %id, expired = gone, "member sessions expired");
                expired += gone;
                self.after_departure(&id, group);
            }
        }
        expired
    }
}

fn join_outcome(group: &Group, member_id: &str) -> JoinOutcome {
    let leader = group.leader.clone().unwrap_or_default();
    let protocol = group.protocol.clone();
    let members = if leader == member_id {
        group
            .members
            .iter()
            .map(|(id, m)| {
                let md = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == protocol.as_ref())
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (id.clone(), m.group_instance_id.clone(), md)
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinOutcome {
        error: 0,
        generation: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol,
        leader,
        member_id: member_id.to_owned(),
        members,
    }
}

fn new_member_suffix() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    uuid::Uuid::from_bytes(b).to_string()
}

async fn sweep_sessions(inner: std::sync::Weak<Inner>, mut shutdown: ShutdownSignal) {
    let mut tick = tokio::time::interval(SESSION_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let c = GroupCoordinator {
            inner,
            sweeper: Arc::new(Mutex::new(None)),
        };
        c.expire_sessions();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::Shutdown;

    fn coordinator() -> (GroupCoordinator, Shutdown) {
        let config = BrokerConfig::load(
            None,
            &[
                "group.initial.rebalance.delay.ms=0".into(),
                "group.min.session.timeout.ms=1000".into(),
            ],
        )
        .unwrap();
        let shutdown = Shutdown::new();
        (GroupCoordinator::new(&config, shutdown.signal()), shutdown)
    }

    fn join_req(member_id: &str, client: &str) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: client.into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 3000,
            rebalance_timeout_ms: 5000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"md"))],
            require_known_member_id: true,
        }
    }

    /// Runs the two-step join of KIP-394 and returns the outcome.
    async fn join(c: &GroupCoordinator, client: &str) -> JoinOutcome {
        let first = c.join(join_req("", client)).await;
        assert_eq!(first.error, ResponseError::MemberIdRequired.code());
        assert!(first.member_id.starts_with(client));
        c.join(join_req(&first.member_id, client)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_stops_heartbeating_is_expired_and_the_rest_rebalance() {
        let (c, _s) = coordinator();
        let a = join(&c, "a").await;
        assert_eq!((a.error, a.generation, a.leader == a.member_id), (0, 1, true));
        assert_eq!(
            c.sync(
                "g",
                1,
                &a.member_id,
                vec![(a.member_id.clone(), Bytes::from_static(b"all"))]
            )
            .await
            .error,
            0
        );

        // b joins: a must rejoin within the rebalance timeout.
        let c2 = c.clone();
        let b_task = tokio::spawn(async move { join(&c2, "b").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id),
            ResponseError::RebalanceInProgress.code()
        );
        let a2 = c.join(join_req(&a.member_id, "a")).await;
        let b = b_task.await.unwrap();
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(a2.members.len(), 2, "the leader sees both members");

        // b stops heartbeating; a keeps going. After b's session timeout the
        // group rebalances and a's heartbeat says so.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let code = c.heartbeat("g", 2, &a.member_id);
            if code == ResponseError::RebalanceInProgress.code() {
                let a3 = c.join(join_req(&a.member_id, "a")).await;
                assert_eq!((a3.error, a3.generation, a3.members.len()), (0, 3, 1));
                return;
            }
            assert!(
                code == 0 || code == ResponseError::IllegalGeneration.code(),
                "unexpected {code}"
            );
        }
        panic!("b was never expired");
    }

    #[tokio::test(start_paused = true)]
    async fn members_that_do_not_rejoin_by_the_deadline_are_dropped() {
        let (c, _s) = coordinator();
        let a = join(&c, "a").await;
        c.sync("g", 1, &a.member_id, vec![]).await;
        // b joins; a never rejoins (it crashed without leaving). The join
        // completes at the rebalance deadline with b alone.
        let b = join(&c, "b").await;
        assert_eq!((b.error, b.generation), (0, 2));
        assert_eq!(b.leader, b.member_id);
        assert_eq!(c.heartbeat("g", 2, &a.member_id), ResponseError::UnknownMemberId.code());
        assert_eq!(c.describe("g").unwrap().members.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn commits_are_checked_against_member_and_generation() {
        let (c, _s) = coordinator();
        assert_eq!(c.check_commit("g", -1, ""), 0, "a simple commit to an unknown group");
        let a = join(&c, "a").await;
        c.sync("g", 1, &a.member_id, vec![]).await;
        assert_eq!(c.check_commit("g", 1, &a.member_id), 0);
        assert_eq!(
            c.check_commit("g", 0, &a.member_id),
            ResponseError::IllegalGeneration.code()
        );
        assert_eq!(
            c.check_commit("g", 1, "stranger"),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(
            c.check_commit("g", -1, ""),
            ResponseError::IllegalGeneration.code(),
            "the group has members"
        );
        assert_eq!(c.remove_if_empty("g"), Err(ResponseError::NonEmptyGroup.code()));
        assert_eq!(c.leave("g", std::slice::from_ref(&a.member_id)), vec![0]);
        assert_eq!(c.remove_if_empty("g"), Ok(true));
    }

    #[tokio::test(start_paused = true)]
    async fn incompatible_protocols_and_bad_timeouts_are_refused() {
        let (c, _s) = coordinator();
        let a = join(&c, "a").await;
        assert_eq!(a.error, 0);
        let mut other = join_req("", "z");
        other.require_known_member_id = false;
        other.protocols = vec![("cooperative-sticky".into(), Bytes::new())];
        assert_eq!(
            c.join(other).await.error,
            ResponseError::InconsistentGroupProtocol.code()
        );
        let mut short = join_req("", "y");
        short.session_timeout_ms = 10;
        assert_eq!(c.join(short).await.error, ResponseError::InvalidSessionTimeout.code());
    }
}
