//! Raft's RPCs over whatever carries bytes between nodes.
//!
//! The broker carries them on its mutually authenticated node-to-node
//! transport; tests carry them through an in-memory network that can cut
//! links. Either way it is a [`RaftTransport`]: send request bytes to a
//! node, get its answer bytes back (or learn that it did not answer).
//!
//! Requests and answers are postcard-encoded [`Rpc`] and [`RpcReply`].
//! A remote node's Raft error travels back as a value, so the sender tells
//! "the peer refused" apart from "the peer was not reached".

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::state_machine::{MetaCommand, MetaResponse, NodeId};
use super::TypeConfig;

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is not reachable")]
    Unreachable(NodeId),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
}

/// Carries one request to a node and brings its answer back.
pub trait RaftTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes, TransportError>> + Send;
}

/// What one node asks another.
#[derive(Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A structural change forwarded to the node believed to lead.
    Write(MetaCommand),
    /// The calling node asks to be added to the group (as a learner, then
    /// a voter), reachable at `addr`.
    Join {
        addr: String,
    },
    /// The calling node asks to leave the group (it must serve no PBFT
    /// cluster): it stops voting and its registration is removed.
    Leave,
}

/// The answer to an [`Rpc`].
#[derive(Serialize, Deserialize)]
pub enum RpcReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Written(WriteOutcome),
    /// The answer to [`Rpc::Join`] (`Applied` once the caller is a voter).
    Joined(WriteOutcome),
    /// The answer to [`Rpc::Leave`] (`Applied` once the caller is out).
    Left(WriteOutcome),
    /// The request could not be decoded.
    Malformed(String),
}

/// What became of a forwarded write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteOutcome {
    Applied(MetaResponse),
    /// Not the leader (the leader it knows of, if any): nothing was written.
    NotLeader(Option<NodeId>),
    Failed(String),
}

pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Encoding into a Vec fails only for types serde cannot express,
    // which these are not; an empty answer is then read as malformed.
    Bytes::from(postcard::to_stdvec(value).unwrap_or_default())
}

pub fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Makes a [`Peer`] per target for openraft.
pub struct Network<T> {
    pub transport: Arc<T>,
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Peer<T>;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        Peer {
            target,
            transport: self.transport.clone(),
        }
    }
}

/// openraft's view of one other node.
pub struct Peer<T> {
    target: NodeId,
    transport: Arc<T>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Garbled(String);

impl<T: RaftTransport> Peer<T> {
    async fn call<E: std::error::Error>(
        &self,
        rpc: &Rpc,
        option: &RPCOption,
    ) -> Result<RpcReply, RPCError<NodeId, BasicNode, E>> {
        let answer = self
            .transport
            .call(self.target, encode(rpc), option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Timeout(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&Garbled(e.to_string()))))
    }

    fn unexpected<E: std::error::Error>(&self, reply: RpcReply) -> RPCError<NodeId, BasicNode, E> {
        let what = match reply {
            RpcReply::Malformed(m) => format!("node {} could not read the request: {m}", self.target),
            _ => format!("node {} answered another request", self.target),
        };
        RPCError::Network(NetworkError::new(&Garbled(what)))
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for Peer<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&Rpc::Append(rpc), &option).await? {
            RpcReply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(&Rpc::Snapshot(rpc), &option).await? {
            RpcReply::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&Rpc::Vote(rpc), &option).await? {
            RpcReply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }
}
