//! Node-to-node transport: one mutually authenticated TLS connection per
//! pair of replicas, carrying length-prefixed frames both ways.
//!
//! The replica with the lower id dials, and redials with back-off whenever
//! the connection drops; the other accepts. Each side proves itself with a
//! certificate signed by the cluster's CA and naming it (`node-<id>.courier`),
//! and the dialer then says which replica it is, which the acceptor checks
//! against the certificate. Consensus messages are signed besides, so TLS
//! keeps the ledger's contents between members and a replica's signature
//! makes what it says undeniable.
//!
//! Each peer has an outgoing queue bounded in bytes. A full queue (a slow or
//! unreachable peer) drops what does not fit rather than stall the node:
//! PBFT retransmits what matters, and a peer that fell far behind catches
//! up by state transfer. Incoming frames are bounded in size; a peer that
//! sends a malformed frame is disconnected.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use courier_consensus::ledger::PartitionKey;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use super::identity::{certificate_names, node_name};
use crate::shutdown::ShutdownSignal;

/// Largest frame accepted from a peer.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Bytes queued for one peer before further frames are dropped.
pub const PEER_QUEUE_BYTES_MAX: usize = 128 << 20;
const REDIAL_MIN: Duration = Duration::from_millis(50);
const REDIAL_MAX: Duration = Duration::from_secs(2);
/// How long a peer may be unreachable and still be listed to clients (the
/// part a Kafka broker's session timeout plays): connections coming up at
/// start, or replaced, do not make brokers vanish from clients' metadata.
pub const NODE_SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TLS handshake (and the dialer's hello) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What travels between nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The dialer's first frame: which replica it is.
    Hello { id: u8 },
    /// A consensus message (`pbft::wire` encoding).
    Consensus(Bytes),
    /// State transfer: blocks of a partition from `from_height`, up to about
    /// `max_bytes`, that a certificate covers.
    Fetch {
        pk: PartitionKey,
        from_height: u64,
        max_bytes: u32,
    },
    /// The answer: canonical blocks from `from_height`, each with its
    /// certificate if it has one.
    Blocks {
        pk: PartitionKey,
        from_height: u64,
        blocks: Vec<(Bytes, Option<Bytes>)>,
    },
    /// A Raft RPC (`reply` false) or its answer (`reply` true), matched by
    /// the caller's `call` number.
    Raft { call: u64, reply: bool, body: Bytes },
    /// Work for a partition this node does not order, sent to a node that
    /// does (`reply` false), or its answer (see `forward`).
    Forward { call: u64, reply: bool, body: Bytes },
}

const HELLO: u8 = 0;
const CONSENSUS: u8 = 1;
const FETCH: u8 = 2;
const BLOCKS: u8 = 3;
const RAFT: u8 = 4;
const FORWARD: u8 = 5;

/// A consensus message as a frame with its length prefix, encoded once.
pub fn consensus_frame(m: &courier_consensus::pbft::SignedMessage) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32(0);
    out.put_u8(CONSENSUS);
    courier_consensus::pbft::wire::encode_message_into(&mut out, m);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

impl Frame {
    /// The frame with its length prefix, ready to write.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u32(0);
        match self {
            Frame::Hello { id } => {
                out.put_u8(HELLO);
                out.put_u8(*id);
            }
            Frame::Consensus(m) => {
                out.reserve(1 + m.len());
                out.put_u8(CONSENSUS);
                out.put_slice(m);
            }
            Frame::Fetch {
                pk,
                from_height,
                max_bytes,
            } => {
                out.put_u8(FETCH);
                out.put_slice(&pk.to_bytes());
                out.put_u64(*from_height);
                out.put_u32(*max_bytes);
            }
            Frame::Blocks {
                pk,
                from_height,
                blocks,
            } => {
                out.put_u8(BLOCKS);
                out.put_slice(&pk.to_bytes());
                out.put_u64(*from_height);
                encode_block_list(&mut out, blocks);
            }
            Frame::Raft { call, reply, body } | Frame::Forward { call, reply, body } => {
                out.reserve(10 + body.len());
                out.put_u8(if matches!(self, Frame::Raft { .. }) {
                    RAFT
                } else {
                    FORWARD
                });
                out.put_u8(u8::from(*reply));
                out.put_u64(*call);
                out.put_slice(body);
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out.freeze()
    }

    /// Decodes a frame's body (after the length prefix).
    pub fn decode(mut b: Bytes) -> Option<Frame> {
        fn pk(b: &mut Bytes) -> Option<PartitionKey> {
            let pk = PartitionKey::from_bytes(b.get(..20)?)?;
            b.advance(20);
            Some(pk)
        }
        if b.is_empty() {
            return None;
        }
        let frame = match b.get_u8() {
            HELLO if b.len() == 1 => Frame::Hello { id: b.get_u8() },
            CONSENSUS => Frame::Consensus(b),
            FETCH if b.len() == 20 + 12 => {
                let pk = pk(&mut b)?;
                Frame::Fetch {
                    pk,
                    from_height: b.get_u64(),
                    max_bytes: b.get_u32(),
                }
            }
            BLOCKS => {
                let pk = pk(&mut b)?;
                if b.len() < 12 {
                    return None;
                }
                let from_height = b.get_u64();
                let blocks = decode_block_list(&mut b)?;
                if !b.is_empty() {
                    return None;
                }
                Frame::Blocks {
                    pk,
                    from_height,
                    blocks,
                }
            }
            kind @ (RAFT | FORWARD) if b.len() >= 9 => {
                let reply = match b.get_u8() {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                let call = b.get_u64();
                if kind == RAFT {
                    Frame::Raft { reply, call, body: b }
                } else {
                    Frame::Forward { reply, call, body: b }
                }
            }
            _ => return None,
        };
        Some(frame)
    }
}

/// Canonical blocks, each with its certificate if it has one, as state
/// transfer and the global-ledger task send them:
/// `count u32`, then per block `len u32 | block | cert_len + 1 u32 | cert`
/// (0 for no certificate).
pub fn encode_block_list(out: &mut BytesMut, blocks: &[(Bytes, Option<Bytes>)]) {
    out.reserve(
        4 + blocks
            .iter()
            .map(|(b, c)| 8 + b.len() + c.as_ref().map_or(0, Bytes::len))
            .sum::<usize>(),
    );
    out.put_u32(blocks.len() as u32);
    for (b, cert) in blocks {
        out.put_u32(b.len() as u32);
        out.put_slice(b);
        match cert {
            Some(c) => {
                out.put_u32(c.len() as u32 + 1);
                out.put_slice(c);
            }
            None => out.put_u32(0),
        }
    }
}

/// Reads what [`encode_block_list`] wrote from the front of `b`.
pub fn decode_block_list(b: &mut Bytes) -> Option<Vec<(Bytes, Option<Bytes>)>> {
    fn take(b: &mut Bytes, n: usize) -> Option<Bytes> {
        (b.len() >= n).then(|| b.split_to(n))
    }
    fn len(b: &mut Bytes) -> Option<usize> {
        (b.len() >= 4).then(|| b.get_u32() as usize)
    }
    let count = len(b)?;
    let mut blocks = Vec::new();
    for _ in 0..count {
        let n = len(b)?;
        let block = take(b, n)?;
        let cert = match len(b)? {
            0 => None,
            n => Some(take(b, n - 1)?),
        };
        blocks.push((block, cert));
    }
    Some(blocks)
}

/// Where incoming frames go (the node decides what each means).
pub trait Inbound: Send + Sync + 'static {
    fn frame(&self, from: u8, frame: Frame) -> impl std::future::Future<Output = ()> + Send;
}

/// Frames at least this large (batches, handed-over and transferred
/// blocks) go in a peer's bulk lane; smaller ones (votes, prepares,
/// commits) overtake them, so a vote never waits behind megabytes.
const BULK_FRAME_BYTES: usize = 16 << 10;

/// One peer's outgoing side: a lane for small frames and one for bulk.
struct Link {
    control: mpsc::UnboundedSender<Bytes>,
    bulk: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Whether a connection to the peer is open now, and since when not.
    reach: Arc<Reach>,
    /// Fault injection for tests: frames to and from the peer are dropped,
    /// as if the network between the two were cut.
    cut: Arc<AtomicBool>,
}

/// Node ids are `u8`s: one slot per possible peer.
const LINKS_MAX: usize = 256;

/// Every peer's link, created once: at start for the configured peers, at
/// the first authenticated connection for a node that joined later.
type Links = Arc<Vec<OnceLock<Link>>>;
/// Where the acceptor hands a peer's authenticated connections.
type Incoming = Arc<Vec<OnceLock<mpsc::Sender<Stream>>>>;

/// The handle the node sends through.
pub struct Transport {
    me: u8,
    links: Links,
}

impl Transport {
    /// Node `peer`'s link, once made.
    fn link(&self, peer: u8) -> Option<&Link> {
        self.links.get(peer as usize).and_then(OnceLock::get)
    }

    /// Queues an encoded frame for `to`; drops it if that peer's queue is full.
    pub fn send(&self, to: u8, frame: Bytes) {
        let Some(link) = self.link(to) else {
            return;
        };
        if link.cut.load(Ordering::Relaxed) {
            return;
        }
        let len = frame.len();
        if link.queued.load(Ordering::Relaxed) + len > PEER_QUEUE_BYTES_MAX {
            metrics::counter!("courier_peer_frames_dropped_total").increment(1);
            return;
        }
        link.queued.fetch_add(len, Ordering::Relaxed);
        let lane = if len >= BULK_FRAME_BYTES {
            &link.bulk
        } else {
            &link.control
        };
        if lane.send(frame).is_err() {
            link.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Bytes queued for node `peer` and not yet written to its connection.
    pub fn queued(&self, peer: u8) -> usize {
        self.link(peer).map_or(0, |link| link.queued.load(Ordering::Relaxed))
    }

    /// Whether node `peer` is reachable now (this node always is).
    pub fn is_up(&self, peer: u8) -> bool {
        if peer == self.me {
            return true;
        }
        self.link(peer)
            .is_some_and(|link| link.reach.is_up() && !link.cut.load(Ordering::Relaxed))
    }

    /// Whether node `peer` is listed to clients: reachable now, or
    /// unreachable for less than [`NODE_SESSION_TIMEOUT`] (since its last
    /// connection ended, or since its link was made if it never had one).
    /// A peer cut off by [`Transport::set_cut`] is not.
    pub fn is_listed(&self, peer: u8) -> bool {
        if peer == self.me {
            return true;
        }
        self.link(peer)
            .is_some_and(|link| link.reach.listed_at(Instant::now()) && !link.cut.load(Ordering::Relaxed))
    }

    /// Fault injection for tests: cuts (or restores) the network between
    /// this node and `peer`: frames either way are dropped meanwhile.
    pub fn set_cut(&self, peer: u8, cut: bool) {
        if let Some(link) = self.link(peer) {
            link.cut.store(cut, Ordering::Relaxed);
        }
    }

    /// Queues a frame for every peer.
    pub fn broadcast(&self, frame: &Bytes) {
        for (to, link) in self.links.iter().enumerate() {
            if to != self.me as usize && link.get().is_some() {
                self.send(to as u8, frame.clone());
            }
        }
    }
}

/// Starts accepting and dialing. `peers` are the configured nodes' peer
/// addresses by id (ours included). Between two configured nodes the one
/// with the smaller id dials; a node that joined a running deployment
/// (`joining`) also dials the nodes before it, which do not know its
/// address, until one of them dials it. Any other node whose certificate
/// the CA signed may connect: its link is made then.
#[allow(clippy::too_many_arguments)]
pub async fn start<I: Inbound>(
    me: u8,
    peers: Vec<String>,
    joining: bool,
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    inbound: Arc<I>,
    shutdown: ShutdownSignal,
) -> Transport {
    let ctx = Arc::new(LinkContext {
        me,
        links: Arc::new((0..LINKS_MAX).map(|_| OnceLock::new()).collect()),
        incoming: Arc::new((0..LINKS_MAX).map(|_| OnceLock::new()).collect()),
        inbound,
        shutdown: shutdown.clone(),
    });
    for (peer, addr) in peers.iter().enumerate().take(LINKS_MAX) {
        let peer = peer as u8;
        if peer == me {
            continue;
        }
        let dial = (me < peer || joining).then(|| (addr.clone(), client.clone()));
        ctx.ensure(peer, dial);
    }
    let links = ctx.links.clone();
    tokio::spawn(accept(ctx, listener, TlsAcceptor::from(server)));
    Transport { me, links }
}

/// What making a link takes.
struct LinkContext<I> {
    me: u8,
    links: Links,
    incoming: Incoming,
    inbound: Arc<I>,
    shutdown: ShutdownSignal,
}

impl<I: Inbound> LinkContext<I> {
    /// The link to `peer`, made (and its task started) if there is none.
    fn ensure(&self, peer: u8, dial: Option<(String, Arc<rustls::ClientConfig>)>) {
        self.links[peer as usize].get_or_init(|| {
            let (control, control_rx) = mpsc::unbounded_channel();
            let (bulk, bulk_rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            let reach = Arc::new(Reach::new(Instant::now()));
            let cut = Arc::new(AtomicBool::new(false));
            let (in_tx, in_rx) = mpsc::channel(4);
            let _ = self.incoming[peer as usize].set(in_tx);
            tokio::spawn(run_link(
                self.me,
                peer,
                dial,
                in_rx,
                Lanes {
                    control: control_rx,
                    bulk: bulk_rx,
                },
                queued.clone(),
                reach.clone(),
                cut.clone(),
                self.inbound.clone(),
                self.shutdown.clone(),
            ));
            Link {
                control,
                bulk,
                queued,
                reach,
                cut,
            }
        });
    }
}

type Stream = tokio_rustls::TlsStream<TcpStream>;

/// Whether a peer is connected, and since when it is not.
struct Reach {
    /// When the link was made.
    made: Instant,
    /// Milliseconds after `made` at which the last connection ended (0 if
    /// there never was one), or [`Reach::CONNECTED`] while one is open.
    down_at: AtomicU64,
}

impl Reach {
    const CONNECTED: u64 = u64::MAX;

    fn new(made: Instant) -> Self {
        Self {
            made,
            down_at: AtomicU64::new(0),
        }
    }

    fn connected(&self) {
        self.down_at.store(Self::CONNECTED, Ordering::Relaxed);
    }

    fn disconnected(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.made).as_millis();
        self.down_at
            .store(u64::try_from(ms).unwrap_or(Self::CONNECTED - 1), Ordering::Relaxed);
    }

    fn is_up(&self) -> bool {
        self.down_at.load(Ordering::Relaxed) == Self::CONNECTED
    }

    /// Connected at `now`, or not for less than [`NODE_SESSION_TIMEOUT`].
    fn listed_at(&self, now: Instant) -> bool {
        match self.down_at.load(Ordering::Relaxed) {
            Self::CONNECTED => true,
            ms => now.saturating_duration_since(self.made + Duration::from_millis(ms)) < NODE_SESSION_TIMEOUT,
        }
    }
}

async fn accept<I: Inbound>(ctx: Arc<LinkContext<I>>, listener: TcpListener, acceptor: TlsAcceptor) {
    let me = ctx.me;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(REDIAL_MIN).await;
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = async {
                let mut tls = acceptor.accept(tcp).await.ok()?;
                let mut head = [0u8; 4];
                tls.read_exact(&mut head).await.ok()?;
                let len = u32::from_be_bytes(head) as usize;
                if len != 2 {
                    return None;
                }
                let mut body = [0u8; 2];
                tls.read_exact(&mut body).await.ok()?;
                let Some(Frame::Hello { id }) = Frame::decode(Bytes::copy_from_slice(&body)) else {
                    return None;
                };
                let (_, conn) = tls.get_ref();
                let cert = conn.peer_certificates()?.first()?;
                (id != me && certificate_names(cert, id)).then_some((id, tls))
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Some((id, tls))) => {
                    // A node the configuration does not name (it joined
                    // later): it dials us, we do not dial it.
                    ctx.ensure(id, None);
                    if let Some(slot) = ctx.incoming[id as usize].get() {
                        let _ = slot.send(tokio_rustls::TlsStream::Server(tls)).await;
                    }
                }
                _ => warn!(%addr, "peer connection refused: handshake failed or certificate does not name the replica"),
            }
        });
    }
}

async fn dial(me: u8, peer: u8, addr: &str, client: Arc<rustls::ClientConfig>) -> std::io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name =
        ServerName::try_from(node_name(peer)).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let connect = async {
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        tls.write_all(&Frame::Hello { id: me }.encode()).await?;
        Ok::<_, std::io::Error>(tls)
    };
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(tokio_rustls::TlsStream::Client(tls))
}

/// The receiving ends of a peer's two lanes.
struct Lanes {
    control: mpsc::UnboundedReceiver<Bytes>,
    bulk: mpsc::UnboundedReceiver<Bytes>,
}

impl Lanes {
    /// The next frame to write: a small one whenever one is waiting.
    async fn next(&mut self) -> Option<Bytes> {
        tokio::select! {
            biased;
            f = self.control.recv() => f,
            f = self.bulk.recv() => f,
        }
    }

    fn is_empty(&self) -> bool {
        self.control.is_empty() && self.bulk.is_empty()
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_link<I: Inbound>(
    me: u8,
    peer: u8,
    mut dial_to: Option<(String, Arc<rustls::ClientConfig>)>,
    mut incoming: mpsc::Receiver<Stream>,
    mut outgoing: Lanes,
    queued: Arc<AtomicUsize>,
    reach: Arc<Reach>,
    cut: Arc<AtomicBool>,
    inbound: Arc<I>,
    mut shutdown: ShutdownSignal,
) {
    let mut backoff = REDIAL_MIN;
    let mut next: Option<Stream> = None;
    loop {
        let stream = match next.take() {
            Some(s) => s,
            None => match dial_to.clone() {
                Some((addr, client)) => match dial(me, peer, &addr, client).await {
                    Ok(s) => {
                        backoff = REDIAL_MIN;
                        s
                    }
                    Err(e) => {
                        debug!(peer, error = %e, "dial failed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            s = incoming.recv() => {
                                if let Some(s) = s.filter(|_| peer < me) {
                                    // We joined; the peer now dials us.
                                    dial_to = None;
                                    next = Some(s);
                                }
                            }
                            _ = shutdown.wait() => return,
                        }
                        backoff = (backoff * 2).min(REDIAL_MAX);
                        continue;
                    }
                },
                None => tokio::select! {
                    s = incoming.recv() => match s { Some(s) => s, None => return },
                    _ = shutdown.wait() => return,
                },
            },
        };
        info!(peer, "peer connected");
        reach.connected();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let read = async {
            loop {
                let mut head = [0u8; 4];
                reader.read_exact(&mut head).await?;
                let len = u32::from_be_bytes(head) as usize;
                if len > FRAME_BYTES_MAX {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
                }
                let mut body = BytesMut::zeroed(len);
                reader.read_exact(&mut body).await?;
                match Frame::decode(body.freeze()) {
                    Some(Frame::Hello { .. }) | None => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed frame"));
                    }
                    Some(_) if cut.load(Ordering::Relaxed) => {}
                    Some(frame) => inbound.frame(peer, frame).await,
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        };
        let write = async {
            while let Some(frame) = outgoing.next().await {
                let len = frame.len();
                let r = writer.write_all(&frame).await;
                queued.fetch_sub(len, Ordering::Relaxed);
                r?;
                if outgoing.is_empty() {
                    writer.flush().await?;
                }
            }
            Ok::<(), std::io::Error>(())
        };
        tokio::pin!(read);
        tokio::pin!(write);
        let ended = loop {
            tokio::select! {
                r = &mut read => break r.err().map(|e| e.to_string()),
                r = &mut write => break r.err().map(|e| e.to_string()),
                s = incoming.recv() => match s {
                    // The peer reconnected (its old connection is dead to
                    // it), or, having joined, we are dialed by a node that
                    // now knows us: its connection is the one both use.
                    Some(s) if dial_to.is_none() || peer < me => {
                        dial_to = None;
                        next = Some(s);
                        break Some("replaced by a new connection".into());
                    }
                    // We dial this peer: a connection it made is not used.
                    Some(_) => continue,
                    None => break Some("closed".into()),
                },
                _ = shutdown.wait() => return,
            }
        };
        reach.disconnected(Instant::now());
        info!(peer, reason = ended.as_deref().unwrap_or("closed"), "peer disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_peer_stays_listed_for_the_session_timeout_after_it_was_last_reachable() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let reach = Reach::new(t0);
        // Never connected: listed for a while after the link is made.
        assert!(!reach.is_up());
        assert!(reach.listed_at(t0 + ms(100)));
        assert!(!reach.listed_at(t0 + NODE_SESSION_TIMEOUT));
        // Connected: listed however long ago that was.
        reach.connected();
        assert!(reach.is_up());
        assert!(reach.listed_at(t0 + NODE_SESSION_TIMEOUT * 100));
        // Disconnected: down at once, listed until the timeout runs out.
        let t1 = t0 + ms(60_000);
        reach.disconnected(t1);
        assert!(!reach.is_up());
        assert!(reach.listed_at(t1 + NODE_SESSION_TIMEOUT - ms(1)));
        assert!(!reach.listed_at(t1 + NODE_SESSION_TIMEOUT));
    }

    #[test]
    fn frames_round_trip() {
        let pk = PartitionKey {
            topic_id: [3; 16],
            partition: 2,
        };
        let frames = [
            Frame::Hello { id: 3 },
            Frame::Consensus(Bytes::from_static(b"signed")),
            Frame::Fetch {
                pk,
                from_height: 9,
                max_bytes: 1 << 20,
            },
            Frame::Blocks {
                pk,
                from_height: 9,
                blocks: vec![
                    (Bytes::from_static(b"block9"), None),
                    (Bytes::from_static(b"block10"), Some(Bytes::from_static(b"cert"))),
                    (Bytes::from_static(b""), Some(Bytes::new())),
                ],
            },
            Frame::Raft {
                call: 7,
                reply: true,
                body: Bytes::from_static(b"vote"),
            },
            Frame::Raft {
                call: u64::MAX,
                reply: false,
                body: Bytes::new(),
            },
            Frame::Forward {
                call: 3,
                reply: false,
                body: Bytes::from_static(b"produce"),
            },
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(
                u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
                bytes.len() - 4
            );
            assert_eq!(Frame::decode(bytes.slice(4..)), Some(f));
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Frame::decode(Bytes::from(raw));
        }
    }
}
