//! The portal on real WebSockets.
//!
//! Generic over the listener ([`Listener`]) and its streams (`AsyncRead + AsyncWrite + Unpin`),
//! so the simulation can run this very code over simulated TCP. The core ([`Portal`]) sits
//! behind one mutex; every call drains its outputs into per-connection queues under that same
//! lock, so frames reach each socket in the order the core produced them.
//!
//! Limits: a queue holds at most [`OUTBOUND_QUEUE_LEN`] frames, and a socket whose node does not
//! keep up is closed (a dropped frame would leave the node out of step with the portal);
//! messages and frames from nodes are at most [`MAX_MESSAGE_LEN`] bytes, refused from the frame
//! header before they are buffered.
//!
//! A node connects to `/<anything>/websocket?token=<token>`, the token percent-encoded
//! ([`node_proto::portal::url`]); an unknown, missing or malformed token is refused at the
//! upgrade with HTTP 401.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use node_proto::portal::frame::MAX_FRAME_LEN;
use node_proto::portal::url::percent_decode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::{ConnId, Identity, Output, Portal};

/// How long a socket may stay silent (nodes heartbeat every 30 s) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Frames queued for one socket at most; one more closes the socket. The portal's largest
/// burst for one socket is a gateway's join (the reply, the init and an `authorize_flow` per
/// live flow of the gateway), or a relay change for every node at once.
pub const OUTBOUND_QUEUE_LEN: usize = 4096;

/// Longest WebSocket message, and frame, accepted from a node: the protocol's
/// [`MAX_FRAME_LEN`]. A longer one closes the socket (close code 1009) as soon as its header
/// says so, instead of being buffered and then dropped by the frame parser.
pub const MAX_MESSAGE_LEN: usize = MAX_FRAME_LEN;

/// How much a connection reads from its socket at a time. tungstenite zeroes this much of its
/// buffer before every read (128 KiB by default): with thousands of nodes that send a
/// heartbeat every 15 s, that was most of the work of a read, and memory held per connection.
/// The control plane's messages are small; a longer one is read in several reads.
pub const READ_BUFFER_LEN: usize = 8 * 1024;

/// The longest the server sleeps before it looks at the core's timers again.
pub const MAX_TIMER_SLEEP: Duration = Duration::from_secs(60);

/// How long an accepted connection may take to be upgraded (the TLS handshake).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Something that accepts connections: a TCP listener, or a simulated one.
pub trait Listener: Send + 'static {
    /// A connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Control messages are small and answered at once: Nagle would hold each behind the
        // peer's delayed ACK of the one before (40 ms and more per exchange).
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }
}

/// Where the server reads wall-clock time (the simulation passes its own).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// How the server waits: the simulation passes a sleep it can see, so that it knows when the
/// portal next wakes.
pub type Sleeper = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// tokio's sleep.
pub fn tokio_sleeper() -> Sleeper {
    Arc::new(|duration| Box::pin(tokio::time::sleep(duration)))
}

/// The real wall clock.
pub fn system_clock() -> Clock {
    // The runtime is the one place that reads real time.
    #[allow(clippy::disallowed_methods)]
    Arc::new(SystemTime::now)
}

enum Outbound {
    Text(String),
    Close(String),
}

/// The server's end of a connection task.
struct Connection {
    queue: mpsc::Sender<Outbound>,
    /// Told when the queue overflowed: the task drops the socket without sending the rest.
    overflowed: Arc<Notify>,
}

impl Connection {
    /// Queues `message`; false if the queue was full and the connection is told to close.
    fn queue(&self, message: Outbound) -> bool {
        match self.queue.try_send(message) {
            // A closed queue means the connection task is already gone.
            Ok(()) | Err(TrySendError::Closed(_)) => true,
            Err(TrySendError::Full(_)) => {
                self.overflowed.notify_one();
                false
            }
        }
    }
}

struct State {
    portal: Portal,
    conns: BTreeMap<ConnId, Connection>,
    next_conn: u64,
}

impl State {
    /// Hands the core's outputs to the connections.
    fn dispatch(&mut self) {
        while let Some(output) = self.portal.poll_output() {
            let (conn, message) = match output {
                Output::Send { conn, text } => (conn, Outbound::Text(text)),
                Output::Close { conn, reason } => (conn, Outbound::Close(reason)),
            };
            let Some(connection) = self.conns.get(&conn) else {
                continue;
            };
            if !connection.queue(message) {
                // The node is gone for the portal at once, so nothing more is queued for it;
                // its task closes the socket.
                tracing::debug!(conn = conn.0, "Outbound queue full");
                self.conns.remove(&conn);
                self.portal.disconnect(conn);
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    clock: Clock,
    sleep: Sleeper,
    idle_timeout: Duration,
}

/// A handle on a running (or about to run) portal server; clones share the same portal.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// A server around `portal`, reading time from `clock`.
    pub fn new(portal: Portal, clock: Clock) -> Self {
        Self::with_sleeper(portal, clock, tokio_sleeper())
    }

    /// [`Server::new`], waiting with `sleep` (its timers and each connection's idle timeout).
    pub fn with_sleeper(portal: Portal, clock: Clock, sleep: Sleeper) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    portal,
                    conns: BTreeMap::new(),
                    next_conn: 1,
                }),
                clock,
                sleep,
                idle_timeout: IDLE_TIMEOUT,
            }),
        }
    }

    /// Accepts connections until `listener` fails. Dropping the future (or aborting its task)
    /// stops the server and closes every socket.
    pub async fn serve<L: Listener>(&self, listener: L) -> io::Result<()> {
        self.serve_upgraded(listener, |stream| std::future::ready(Ok(stream)))
            .await
    }

    /// [`Server::serve`], with every accepted stream first upgraded by `upgrade` (a TLS
    /// handshake, say) in the connection's own task, within [`UPGRADE_TIMEOUT`]: a slow or
    /// failing upgrade holds up no other connection.
    pub async fn serve_upgraded<L, U, F, S>(&self, mut listener: L, upgrade: U) -> io::Result<()>
    where
        L: Listener,
        U: Fn(L::Stream) -> F + Clone + Send + 'static,
        F: Future<Output = io::Result<S>> + Send,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut connections = JoinSet::new();
        loop {
            let timer = self.until_timeout();
            tokio::select! {
                biased;
                () = (self.shared.sleep)(timer) => self.handle_timeout(),
                accepted = listener.accept() => {
                    let (stream, peer) = accepted?;
                    let shared = Arc::clone(&self.shared);
                    let upgrade = upgrade.clone();
                    connections.spawn(async move {
                        match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade(stream)).await {
                            Ok(Ok(stream)) => handle_connection(shared, stream, peer).await,
                            Ok(Err(error)) => {
                                tracing::info!(%peer, %error, "Connection refused before the WebSocket");
                            }
                            Err(_) => tracing::info!(%peer, "Connection too slow to set up: closed"),
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    /// How long until the core's next timeout, by the server's clock; at most
    /// [`MAX_TIMER_SLEEP`], so that a clock that jumps is read again soon.
    fn until_timeout(&self) -> Duration {
        let now = (self.shared.clock)();
        lock(&self.shared)
            .portal
            .poll_timeout()
            .map_or(MAX_TIMER_SLEEP, |at| {
                at.duration_since(now).unwrap_or(Duration::ZERO)
            })
            .min(MAX_TIMER_SLEEP)
    }

    fn handle_timeout(&self) {
        let now = (self.shared.clock)();
        let mut state = lock(&self.shared);
        state.portal.handle_timeout(now);
        state.dispatch();
    }

    /// Changes the portal's state (add a resource, revoke a policy, ...) and sends what it
    /// pushes. `f` gets the portal and the current time.
    pub fn with_portal<R>(&self, f: impl FnOnce(&mut Portal, SystemTime) -> R) -> R {
        let now = (self.shared.clock)();
        let mut state = lock(&self.shared);
        let r = f(&mut state.portal, now);
        state.dispatch();
        r
    }

    /// Replaces the portal with a new one (a restart): every socket is closed, so nodes
    /// reconnect and join the new portal.
    pub fn restart(&self, portal: Portal) {
        let mut state = lock(&self.shared);
        state.portal = portal;
        for (_, connection) in std::mem::take(&mut state.conns) {
            connection.queue(Outbound::Close("portal restarting".into()));
        }
        tracing::info!("Portal restarted");
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the portal as consistent as its last call; keep
    // serving rather than poisoning every other connection.
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `token` query parameter of a request URI, still percent-encoded.
fn token(request: &Request) -> Option<&str> {
    request
        .uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v)
}

fn unauthorized(reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_owned()));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

async fn handle_connection<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut identity = None;
    // The error type is tungstenite's callback contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        let path = request.uri().path();
        let token = match token(request).map(percent_decode) {
            Some(Ok(token)) => token,
            Some(Err(error)) => {
                tracing::info!(%peer, %path, %error, "Refusing malformed token");
                return Err(unauthorized("malformed token"));
            }
            None => {
                tracing::info!(%peer, %path, "Refusing a request without a token");
                return Err(unauthorized("unknown or missing token"));
            }
        };
        match lock(&shared).portal.authenticate(&token) {
            Some(id) => {
                identity = Some(id);
                Ok(response)
            }
            None => {
                tracing::info!(%peer, %path, "Refusing unknown token");
                Err(unauthorized("unknown or missing token"))
            }
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_LEN)
        .max_message_size(Some(MAX_MESSAGE_LEN))
        .max_frame_size(Some(MAX_MESSAGE_LEN));
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
    {
        Ok(ws) => ws,
        Err(error) => {
            tracing::debug!(%peer, %error, "WebSocket upgrade failed");
            return;
        }
    };
    let Some(identity) = identity else {
        return;
    };
    let (queue, mut rx) = mpsc::channel(OUTBOUND_QUEUE_LEN);
    let overflowed = Arc::new(Notify::new());
    let conn = {
        let mut state = lock(&shared);
        let conn = ConnId(state.next_conn);
        state.next_conn += 1;
        let connection = Connection {
            queue,
            overflowed: Arc::clone(&overflowed),
        };
        state.conns.insert(conn, connection);
        state.portal.connect(conn, identity);
        state.dispatch();
        conn
    };
    let span = match identity {
        Identity::Client(cid) => tracing::info_span!("conn", %cid, %peer),
        Identity::Gateway(gid) => tracing::info_span!("conn", %gid, %peer),
    };
    let _entered = span.enter();
    let (mut sink, mut source) = ws.split();
    let mut idle = (shared.sleep)(shared.idle_timeout);
    'session: loop {
        tokio::select! {
            biased;
            () = overflowed.notified() => {
                tracing::info!(limit = OUTBOUND_QUEUE_LEN, "Closing: the outbound queue is full");
                break;
            }
            outbound = rx.recv() => match outbound {
                Some(Outbound::Text(text)) => {
                    // A node that stops reading blocks the send; its queue fills meanwhile.
                    let sent = tokio::select! {
                        biased;
                        () = overflowed.notified() => {
                            tracing::info!(
                                limit = OUTBOUND_QUEUE_LEN,
                                "Closing: the outbound queue is full"
                            );
                            break 'session;
                        }
                        sent = sink.send(WsMessage::text(text)) => sent,
                    };
                    if let Err(error) = sent {
                        tracing::debug!(%error, "Send failed");
                        break;
                    }
                }
                Some(Outbound::Close(reason)) => {
                    close(&mut sink, &reason).await;
                    break;
                }
                None => {
                    close(&mut sink, "portal restarting").await;
                    break;
                }
            },
            inbound = source.next() => match inbound {
                Some(Ok(WsMessage::Text(text))) => {
                    idle = (shared.sleep)(shared.idle_timeout);
                    let now = (shared.clock)();
                    let mut state = lock(&shared);
                    state.portal.handle_text(conn, text.as_str(), now);
                    state.dispatch();
                }
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Ok(
                    WsMessage::Binary(_)
                    | WsMessage::Ping(_)
                    | WsMessage::Pong(_)
                    | WsMessage::Frame(_),
                )) => {}
                Some(Err(WsError::Capacity(error))) => {
                    tracing::info!(%error, limit = MAX_MESSAGE_LEN, "Closing: message too large");
                    close_with(&mut sink, CloseCode::Size, "message too large").await;
                    break;
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "Receive failed");
                    break;
                }
            },
            () = &mut idle => {
                tracing::info!("Closing silent connection");
                close(&mut sink, "heartbeat timeout").await;
                break;
            }
        }
    }
    let mut state = lock(&shared);
    state.conns.remove(&conn);
    state.portal.disconnect(conn);
    state.dispatch();
}

async fn close<S>(sink: &mut S, reason: &str)
where
    S: futures_util::Sink<WsMessage> + Unpin,
{
    close_with(sink, CloseCode::Policy, reason).await;
}

async fn close_with<S>(sink: &mut S, code: CloseCode, reason: &str)
where
    S: futures_util::Sink<WsMessage> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = sink.send(WsMessage::Close(Some(frame))).await;
}
