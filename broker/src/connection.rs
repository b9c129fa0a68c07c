//! One client connection: reads frames, decodes requests, hands them to the
//! handlers, and writes responses back in request order.
//!
//! Kafka processes a connection's requests one at a time. Courier keeps that
//! order with one exception that matters for throughput: consecutive Produce
//! requests are *queued* to the sequencer in order and answered as their
//! blocks commit, so a producer with several requests in flight gets them
//! group-committed together. Before any other request runs, every earlier
//! response has been written, so a later request always sees the effects of
//! the earlier ones. At most `connection.requests.inflight.max` responses
//! are pending; past that the connection stops reading (back-pressure).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use courier_protocol::frame::{decode_frame, frame_length, LENGTH_PREFIX_BYTES};
use courier_protocol::request::{decode_request, RequestError};
use courier_protocol::response::encode_response;
use courier_protocol::{ApiKey, RequestKind, ResponseKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info_span, warn, Instrument};

use crate::api::{self, Reply, RequestContext, ResponseFuture};
use crate::auth::sasl::{SaslSession, Step};
use crate::auth::ANONYMOUS;
use crate::memory::Reservation;
use crate::server::Listener;
use crate::shutdown::ShutdownSignal;
use crate::Broker;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A response body: ready now, or when queued work completes.
#[allow(clippy::large_enum_variant)] // one per request, moved once
enum Body {
    Ready(ResponseKind),
    Pending(ResponseFuture),
    /// A SASL token after a v0 handshake: a bare frame, no Kafka header.
    RawToken(bytes::Bytes),
}

/// A response the writer will send once its body is ready.
struct Outgoing {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: Body,
    started: Instant,
    /// The request's bytes in `queued.max.request.bytes`, returned once
    /// the body is ready.
    reservation: Option<Reservation>,
}

/// Who the connection acts as, and how it authenticates.
struct Session {
    listener: Arc<Listener>,
    peer: SocketAddr,
    host: Arc<str>,
    principal: Arc<str>,
    default_organization: Arc<str>,
    /// On a SASL listener: the exchange, and whether it proved a user.
    sasl: Option<SaslSession>,
    /// After a SaslHandshake v0, the tokens come as bare frames (before
    /// KIP-152) until the exchange ends.
    raw_tokens: bool,
}

/// Serves one connection until the peer closes it, sends something that is
/// not a request we can answer, or the broker shuts down. On a TLS
/// listener the handshake comes first, bounded by
/// `authentication.timeout.ms`.
pub async fn serve(
    broker: Arc<Broker>,
    listener: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: ShutdownSignal,
) {
    let span = info_span!("connection", %peer, listener = %listener.name);
    async move {
        let _ = stream.set_nodelay(true);
        let opened = tokio::time::Instant::now();
        let auth_deadline = opened + Duration::from_millis(broker.config.authentication_timeout_ms);
        let mut session = Session {
            listener: listener.clone(),
            peer,
            host: peer.ip().to_string().into(),
            principal: ANONYMOUS.into(),
            default_organization: broker.config.organization.as_str().into(),
            sasl: listener
                .protocol
                .sasl()
                .then(|| SaslSession::new(listener.mechanisms.clone(), broker.reauth())),
            raw_tokens: false,
        };
        match &listener.tls {
            None => {
                let (reader, writer) = stream.into_split();
                run(broker, reader, writer, session, auth_deadline, shutdown).await
            }
            Some(tls) => {
                let mut stop = shutdown.clone();
                let accepted = tokio::select! {
                    a = tokio::time::timeout_at(auth_deadline, tls.acceptor.accept(stream)) => a,
                    _ = stop.wait() => return,
                };
                let stream = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        warn!(error = %e, "closing connection: TLS handshake failed");
                        metrics::counter!("courier_connections_closed_total", "reason" => "tls_handshake").increment(1);
                        return;
                    }
                    Err(_) => {
                        warn!("closing connection: TLS handshake not finished within authentication.timeout.ms");
                        metrics::counter!("courier_connections_closed_total", "reason" => "auth_timeout").increment(1);
                        return;
                    }
                };
                if let Some((subject, organization)) = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| tls.identify(chain))
                {
                    if !listener.protocol.sasl() {
                        session.principal = format!("User:{}", broker.principal_mapping.apply(&subject)).into();
                    }
                    if let Some(o) = organization {
                        session.default_organization = o.into();
                    }
                    debug!(%subject, "client certificate");
                }
                let (reader, writer) = tokio::io::split(stream);
                run(broker, reader, writer, session, auth_deadline, shutdown).await
            }
        }
    }
    .instrument(span)
    .await
}

/// The request loop, over any byte stream.
async fn run<R, W>(
    broker: Arc<Broker>,
    mut reader: R,
    writer: W,
    mut session: Session,
    auth_deadline: tokio::time::Instant,
    mut shutdown: ShutdownSignal,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    {
        let inflight_max = broker.config.connection_requests_inflight_max;
        let (tx, rx) = mpsc::channel::<Outgoing>(inflight_max);
        let (written_tx, mut written) = watch::channel(0u64);
        let write_timeout = Duration::from_millis(broker.config.connections_write_timeout_ms);
        let writer = tokio::spawn(write_responses(writer, rx, written_tx, write_timeout).in_current_span());
        let frame_max = broker.config.socket_request_max_bytes as usize;
        let sasl_frame_max = broker.config.sasl_server_max_receive_size as usize;
        let read_timeout = Duration::from_millis(broker.config.connections_read_timeout_ms);
        let memory = broker.request_memory.connection();
        // The reservation for the frame at the front of `buf`, and when the
        // rest of it must have arrived.
        let mut reserved: Option<Reservation> = None;
        let mut frame_deadline: Option<tokio::time::Instant> = None;
        let idle = Duration::from_millis(broker.config.connections_max_idle_ms);
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let mut enqueued = 0u64;
        let failed_auth_delay = Duration::from_millis(broker.config.connection_failed_authentication_delay_ms);
        'conn: loop {
            // Until a SASL session is proven, it has the authentication
            // timeout to get there.
            let authenticating = session.sasl.as_ref().is_some_and(|s| s.authenticated.is_none());
            let (deadline, frame_limit) = if authenticating {
                (idle_deadline.min(auth_deadline), frame_max.min(sasl_frame_max))
            } else {
                (idle_deadline, frame_max)
            };
            let (frame, reservation) = loop {
                // Memory first: the body is read only once it is reserved.
                if reserved.is_none() {
                    if let Some(length) = frame_length(&buf).and_then(|l| usize::try_from(l).ok()) {
                        if length <= frame_limit {
                            let reservation = tokio::select! {
                                r = memory.reserve(length as u64) => r,
                                _ = shutdown.wait() => break 'conn,
                            };
                            reserved = Some(reservation);
                            if buf.len() < LENGTH_PREFIX_BYTES + length {
                                frame_deadline = Some(tokio::time::Instant::now() + read_timeout);
                            }
                        }
                    }
                }
                match decode_frame(&mut buf, frame_limit) {
                    Ok(Some(frame)) => {
                        frame_deadline = None;
                        break (frame, reserved.take());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "closing connection: bad frame");
                        metrics::counter!("courier_connections_closed_total", "reason" => "bad_frame").increment(1);
                        break 'conn;
                    }
                }
                buf.reserve(READ_CHUNK_BYTES);
                let read_deadline = frame_deadline.map_or(deadline, |f| f.min(deadline));
                tokio::select! {
                    read = reader.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => break 'conn,
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep_until(read_deadline) => {
                        let reason = if frame_deadline == Some(read_deadline) {
                            warn!("closing connection: a request did not arrive whole within connections.read.timeout.ms");
                            "read_timeout"
                        } else if authenticating && deadline == auth_deadline {
                            "auth_timeout"
                        } else {
                            "idle"
                        };
                        debug!(reason, "closing connection");
                        metrics::counter!("courier_connections_closed_total", "reason" => reason).increment(1);
                        break 'conn;
                    }
                    _ = shutdown.wait() => break 'conn,
                }
            };
            metrics::counter!("courier_bytes_in_total").increment(frame.len() as u64 + 4);
            idle_deadline = tokio::time::Instant::now() + idle;
            let started = Instant::now();
            let frame = frame.freeze();
            if session.raw_tokens {
                match raw_token(&broker, &mut session, &frame) {
                    Some(token) => {
                        let out = Outgoing {
                            api_key: ApiKey::SaslAuthenticate,
                            version: 0,
                            correlation_id: 0,
                            body: Body::RawToken(token),
                            started,
                            reservation,
                        };
                        if !queue(&tx, out, &mut enqueued).await {
                            break;
                        }
                        continue;
                    }
                    None => {
                        tokio::time::sleep(failed_auth_delay).await;
                        break;
                    }
                }
            }
            let request = match decode_request(frame.clone()) {
                Ok(r) => r,
                Err(RequestError::UnsupportedVersion {
                    api_key: ApiKey::ApiVersions,
                    correlation_id,
                    ..
                }) => {
                    // KIP-511: answer in v0 with our table so the client can pick.
                    let out = Outgoing {
                        api_key: ApiKey::ApiVersions,
                        version: 0,
                        correlation_id,
                        body: Body::Ready(api::api_versions::unsupported_version()),
                        started,
                        reservation,
                    };
                    if !queue(&tx, out, &mut enqueued).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "closing connection: request cannot be served");
                    debug!(frame_head = %hex_head(&frame), "refused frame");
                    metrics::counter!("courier_connections_closed_total", "reason" => "bad_request").increment(1);
                    break;
                }
            };
            if request.trailing_bytes > 0 {
                debug!(api = ?request.api_key, trailing = request.trailing_bytes, "ignoring bytes after the request body");
            }
            let api_key = request.api_key;
            let version = request.version();
            let correlation_id = request.correlation_id();
            if matches!(api_key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
                let (body, close) = sasl_step(&broker, &mut session, request);
                if let ResponseKind::SaslHandshake(h) = &body {
                    session.raw_tokens = version == 0 && h.error_code == 0 && session.sasl.is_some();
                }
                if close {
                    tokio::time::sleep(failed_auth_delay).await;
                }
                let out = Outgoing {
                    api_key,
                    version,
                    correlation_id,
                    body: Body::Ready(body),
                    started,
                    reservation,
                };
                if !queue(&tx, out, &mut enqueued).await || close {
                    break;
                }
                continue;
            }
            if let Some(sasl) = &session.sasl {
                if api_key != ApiKey::ApiVersions && !sasl.is_serving(Instant::now()) {
                    let reason = if sasl.authenticated.is_some() {
                        "session_expired"
                    } else {
                        "unauthenticated"
                    };
                    warn!(api = ?api_key, reason, "closing connection: request before SASL authentication");
                    metrics::counter!("courier_connections_closed_total", "reason" => reason).increment(1);
                    break;
                }
            }
            let ctx = RequestContext {
                client_id: request
                    .header
                    .client_id
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                peer: session.peer,
                host: session.host.clone(),
                principal: session.principal.clone(),
                default_organization: session.default_organization.clone(),
                listener: session.listener.name.clone(),
                api: api::api_name(api_key),
            };
            // Every request but Produce sees all earlier responses written first.
            if api_key != ApiKey::Produce && written.wait_for(|w| *w >= enqueued).await.is_err() {
                break;
            }
            let span = info_span!("request", api = ?api_key, version, correlation_id, client_id = %ctx.client_id, principal = %ctx.principal);
            let reply = api::dispatch(&broker, &ctx, request).instrument(span).await;
            let body = match reply {
                Reply::Now(body) => Body::Ready(body),
                Reply::Later(fut) => Body::Pending(fut),
                Reply::Nothing => continue,
                Reply::Close => break,
            };
            if tx
                .send(Outgoing {
                    api_key,
                    version,
                    correlation_id,
                    body,
                    started,
                    reservation,
                })
                .await
                .is_err()
            {
                break;
            }
            enqueued += 1;
        }
        drop(tx);
        let _ = writer.await;
        debug!("connection closed");
    }
}

/// Serves a SaslHandshake or SaslAuthenticate. Returns the response and
/// whether the connection closes after it (a failed authentication, or a
/// handshake out of turn).
fn sasl_step(
    broker: &Broker,
    session: &mut Session,
    request: courier_protocol::request::Request,
) -> (ResponseKind, bool) {
    use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};
    use kafka_protocol::ResponseError;
    let illegal = ResponseError::IllegalSaslState.code();
    let Some(sasl) = session.sasl.as_mut() else {
        // Not a SASL listener: nothing to authenticate (Kafka answers so,
        // and keeps the connection).
        return match request.body {
            RequestKind::SaslHandshake(_) => (
                ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_error_code(illegal)),
                false,
            ),
            _ => (
                ResponseKind::SaslAuthenticate(SaslAuthenticateResponse::default().with_error_code(illegal)),
                false,
            ),
        };
    };
    match request.body {
        RequestKind::SaslHandshake(req) => {
            let (response, ok) = sasl.handshake(&req);
            if !ok {
                metrics::counter!("courier_authentications_total", "mechanism" => "unsupported", "result" => "failed")
                    .increment(1);
                warn!(mechanism = %req.mechanism.as_str(), "SASL handshake refused");
            }
            // An unsupported mechanism leaves the client free to try another
            // (Kafka keeps the connection); a handshake out of turn closes it.
            let close = response.error_code == illegal;
            (ResponseKind::SaslHandshake(response), close)
        }
        RequestKind::SaslAuthenticate(req) => {
            let state = broker.security.snapshot();
            let step = sasl.authenticate(&req.auth_bytes, Instant::now(), &state);
            let (response, close) = settle(session, step);
            (ResponseKind::SaslAuthenticate(response), close)
        }
        _ => (
            ResponseKind::SaslAuthenticate(SaslAuthenticateResponse::default().with_error_code(illegal)),
            true,
        ),
    }
}

/// Hands a response to the writer; `false` once the writer is gone.
async fn queue(tx: &mpsc::Sender<Outgoing>, out: Outgoing, enqueued: &mut u64) -> bool {
    let sent = tx.send(out).await.is_ok();
    *enqueued += u64::from(sent);
    sent
}

/// Records what an authentication step did to the session (principal,
/// metrics, audit log). Returns the response and whether to close.
fn settle(session: &mut Session, step: Step) -> (kafka_protocol::messages::SaslAuthenticateResponse, bool) {
    match step {
        Step::Continue(response) => (response, false),
        Step::Done(response, proven) => {
            metrics::counter!("courier_authentications_total", "mechanism" => proven.mechanism.name(), "result" => "ok")
                .increment(1);
            session.principal = format!("User:{}", proven.user).into();
            tracing::info!(principal = %session.principal, mechanism = proven.mechanism.name(), "authenticated");
            (response, false)
        }
        Step::Failed(response, reason) => {
            metrics::counter!("courier_authentications_total", "mechanism" => "sasl", "result" => "failed")
                .increment(1);
            warn!(target: "courier::audit", host = %session.host, %reason, "SASL authentication failed");
            (response, true)
        }
    }
}

/// A bare SASL token after a v0 handshake: the token to answer with, or
/// `None` to close (a v0 client learns of a failure by the closed
/// connection, as with Kafka).
fn raw_token(broker: &Broker, session: &mut Session, frame: &[u8]) -> Option<bytes::Bytes> {
    let sasl = session.sasl.as_mut()?;
    let state = broker.security.snapshot();
    let step = sasl.authenticate(frame, Instant::now(), &state);
    let done = matches!(step, Step::Done(..));
    let (response, close) = settle(session, step);
    if done {
        session.raw_tokens = false;
    }
    (!close).then_some(response.auth_bytes)
}

/// The first bytes of a frame, in hex, for logs.
fn hex_head(frame: &[u8]) -> String {
    const HEAD_BYTES: usize = 128;
    frame.iter().take(HEAD_BYTES).map(|b| format!("{b:02x}")).collect()
}

/// Writes responses in order. A client that takes none for `timeout`
/// (it stopped reading) loses its connection: its buffers are freed and,
/// the writer gone, the reader stops too.
async fn write_responses<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    written: watch::Sender<u64>,
    timeout: Duration,
) {
    let mut out = BytesMut::new();
    while let Some(next) = rx.recv().await {
        let body = match next.body {
            Body::Ready(body) => body,
            Body::Pending(fut) => fut.await,
            Body::RawToken(token) => {
                let mut frame = Vec::with_capacity(4 + token.len());
                frame.extend_from_slice(&(token.len() as u32).to_be_bytes());
                frame.extend_from_slice(&token);
                if !matches!(
                    tokio::time::timeout(timeout, writer.write_all(&frame)).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
                written.send_modify(|w| *w += 1);
                continue;
            }
        };
        // The request is done with; its bytes go back to the pool before
        // the response waits on a slow socket.
        drop(next.reservation);
        out.clear();
        if let Err(e) = encode_response(&mut out, next.api_key, next.version, next.correlation_id, &body) {
            // Our own bug; the client cannot be answered in this version.
            tracing::error!(error = %e, "closing connection: response encoding failed");
            break;
        }
        let api = api::api_name(next.api_key);
        metrics::counter!("courier_bytes_out_total").increment(out.len() as u64);
        metrics::histogram!("courier_request_seconds", "api" => api).record(next.started.elapsed().as_secs_f64());
        match tokio::time::timeout(timeout, writer.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                warn!("closing connection: the client took no response for connections.write.timeout.ms");
                metrics::counter!("courier_connections_closed_total", "reason" => "write_timeout").increment(1);
                break;
            }
        }
        written.send_modify(|w| *w += 1);
    }
    let _ = writer.shutdown().await;
}
