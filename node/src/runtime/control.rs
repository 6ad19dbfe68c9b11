//! The runtime's connection to the portal: a WebSocket over whatever byte stream a
//! [`Connector`] opens (TCP in production, turmoil's TCP in the simulation).
//!
//! The engine's [`node_core::portal::PhoenixChannel`] decides when to open and close; the link only
//! carries text frames. Every socket gets a generation number, so input from a socket the engine
//! already gave up on never reaches it.

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};

use node_core::engine::{ControlCommand, ControlInput};
use node_core::portal::ConnectionError;

use super::{Clock, TokioClock};

/// How long opening the stream and the WebSocket handshake may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much the portal link reads from its socket at a time. tungstenite zeroes this much of
/// its buffer before every read (128 KiB by default), most of the work of reading a heartbeat's
/// answer; the portal's messages are small, and a longer one is read in several reads.
const READ_BUFFER_LEN: usize = 8 * 1024;

/// The engine's link to the portal, as the event loop uses it.
pub trait ControlLink {
    /// Carries out a command of the engine.
    fn apply(&mut self, command: ControlCommand);
    /// The next input for the engine.
    fn recv(&mut self) -> impl Future<Output = ControlInput>;
}

/// No portal: nothing ever arrives (for nodes driven directly, as in tests).
#[derive(Debug, Default)]
pub struct NoControl;

impl ControlLink for NoControl {
    fn apply(&mut self, _: ControlCommand) {}

    fn recv(&mut self) -> impl Future<Output = ControlInput> {
        std::future::pending()
    }
}

/// Opens the byte stream a WebSocket runs over.
pub trait Connector: 'static {
    /// The stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    /// Opens a new stream to the portal.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Stream>>;
    /// What a failure of [`Connector::connect`] means for the portal session: by default an
    /// I/O error, retried; a connector with TLS tells a certificate that failed verification.
    fn connection_error(&self, error: io::Error) -> ConnectionError {
        ConnectionError::Io(error.to_string())
    }
}

/// A WebSocket to the portal. Its tasks are spawned with `spawn_local`: run it inside a
/// `LocalSet` (the simulation's hosts are; production runs the node on a current-thread
/// runtime with one).
pub struct WebSocketLink<C, K = TokioClock> {
    connector: Rc<C>,
    clock: K,
    url: String,
    generation: u64,
    inbound_tx: mpsc::UnboundedSender<(u64, ControlInput)>,
    inbound_rx: mpsc::UnboundedReceiver<(u64, ControlInput)>,
    outbound: Option<mpsc::UnboundedSender<String>>,
    task: Option<JoinHandle<()>>,
}

impl<C: Connector> WebSocketLink<C> {
    /// A link that connects with `connector` and requests `url` (its path and query carry the
    /// node's token; the host part only fills the Host header).
    pub fn new(connector: C, url: impl Into<String>) -> Self {
        Self::with_clock(connector, url, TokioClock)
    }
}

impl<C: Connector, K: Clock + Clone + 'static> WebSocketLink<C, K> {
    /// [`WebSocketLink::new`], timing the connection attempt on `clock`.
    pub fn with_clock(connector: C, url: impl Into<String>, clock: K) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        Self {
            connector: Rc::new(connector),
            clock,
            url: url.into(),
            generation: 0,
            inbound_tx,
            inbound_rx,
            outbound: None,
            task: None,
        }
    }

    fn close(&mut self) {
        self.outbound = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Whatever the old socket still reports is stale from here on.
        self.generation += 1;
    }

    fn open(&mut self) {
        self.close();
        let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
        self.outbound = Some(outbound_tx);
        let generation = self.generation;
        let inbound = self.inbound_tx.clone();
        let connector = Rc::clone(&self.connector);
        let url = self.url.clone();
        let clock = self.clock.clone();
        self.task = Some(tokio::task::spawn_local(async move {
            let report = |input| {
                let _ = inbound.send((generation, input));
            };
            let deadline = clock.now() + CONNECT_TIMEOUT;
            let opened = tokio::select! {
                biased;
                opened = handshake(&*connector, &url) => opened,
                () = clock.sleep_until(deadline) => Err(ConnectionError::Io(
                    "connecting timed out".to_owned(),
                )),
            };
            match opened {
                Ok(ws) => {
                    report(ControlInput::Opened);
                    let error = pump(ws, outbound_rx, &report).await;
                    report(ControlInput::Closed(error));
                }
                Err(error) => report(ControlInput::Closed(error)),
            }
        }));
    }
}

impl<C: Connector, K: Clock + Clone + 'static> ControlLink for WebSocketLink<C, K> {
    fn apply(&mut self, command: ControlCommand) {
        match command {
            ControlCommand::Open => self.open(),
            ControlCommand::Close => self.close(),
            ControlCommand::Send(text) => {
                if let Some(outbound) = &self.outbound {
                    let _ = outbound.send(text);
                }
            }
        }
    }

    async fn recv(&mut self) -> ControlInput {
        loop {
            match self.inbound_rx.recv().await {
                Some((generation, input)) if generation == self.generation => return input,
                Some(_) => continue,
                // We hold a sender ourselves, so the channel never closes.
                None => return std::future::pending().await,
            }
        }
    }
}

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

async fn handshake<C: Connector>(
    connector: &C,
    url: &str,
) -> Result<Ws<C::Stream>, ConnectionError> {
    let stream = connector
        .connect()
        .await
        .map_err(|e| connector.connection_error(e))?;
    let config =
        tungstenite::protocol::WebSocketConfig::default().read_buffer_size(READ_BUFFER_LEN);
    match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
        Ok((ws, _response)) => Ok(ws),
        Err(error) => Err(to_connection_error(error)),
    }
}

/// Moves frames until the socket fails or closes; returns why it ended.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: Ws<S>,
    mut outbound: mpsc::UnboundedReceiver<String>,
    report: &impl Fn(ControlInput),
) -> ConnectionError {
    loop {
        tokio::select! {
            biased;
            text = outbound.recv() => {
                let Some(text) = text else {
                    let _ = ws.close(None).await;
                    return ConnectionError::Closed { reason: "closed by the node".to_owned() };
                };
                if let Err(error) = ws.send(Message::text(text)).await {
                    return to_connection_error(error);
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => report(ControlInput::Text(text.as_str().to_owned())),
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default();
                    return ConnectionError::Closed { reason };
                }
                Some(Ok(
                    Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
                )) => {}
                Some(Err(error)) => return to_connection_error(error),
                None => return ConnectionError::Closed { reason: String::new() },
            },
        }
    }
}

fn to_connection_error(error: tungstenite::Error) -> ConnectionError {
    match error {
        tungstenite::Error::Http(response) => ConnectionError::Http {
            status: response.status().as_u16(),
        },
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ConnectionError::Closed {
                reason: String::new(),
            }
        }
        other @ (tungstenite::Error::Io(_)
        | tungstenite::Error::Tls(_)
        | tungstenite::Error::Capacity(_)
        | tungstenite::Error::Protocol(_)
        | tungstenite::Error::WriteBufferFull(_)
        | tungstenite::Error::Utf8(_)
        | tungstenite::Error::AttackAttempt
        | tungstenite::Error::Url(_)
        | tungstenite::Error::HttpFormat(_)) => ConnectionError::Io(other.to_string()),
    }
}
