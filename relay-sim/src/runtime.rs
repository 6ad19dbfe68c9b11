//! The thin I/O shell around [`Server`]: read datagrams from every socket, feed the core, flush
//! its events and transmits, sleep until its next timeout.
//!
//! Every socket has a reader task that forwards datagrams into one channel; the loop owns the
//! server, so the protocol runs on one task. Relay sockets are bound on
//! [`Event::AllocationCreated`] and closed on [`Event::AllocationFreed`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::net::{Network, UdpSocketLike};
use crate::server::{Event, Server, Transmit};

/// Datagrams handled before the loop flushes transmits and looks at timers again.
const BATCH: usize = 64;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_536;

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The listening socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

struct Inbound {
    local: SocketAddr,
    from: SocketAddr,
    bytes: Vec<u8>,
}

struct Bound<S> {
    socket: Arc<S>,
    reader: JoinHandle<()>,
}

/// Runs `server` on `net`, listening on `listen`, until `shutdown` completes.
///
/// Relay sockets are bound on `listen.ip()` and the relay port. On return, all reader tasks are
/// stopped and all sockets closed.
pub async fn run<N: Network>(
    net: &N,
    server: Server,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<Server, RuntimeError> {
    run_observed(net, server, listen, shutdown, |_| {}).await
}

/// [`run`], calling `observe` with the server after every batch of input and every timeout:
/// a test's view of the relay's state as it runs.
pub async fn run_observed<N: Network>(
    net: &N,
    server: Server,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
    mut observe: impl FnMut(&Server),
) -> Result<Server, RuntimeError> {
    run_loop(
        net,
        server,
        listen,
        shutdown,
        &mut observe,
        None::<(Duration, Unmeasured)>,
    )
    .await
}

/// The measure of a loop that measures nothing.
type Unmeasured = fn(&Server, &Traffic);

/// [`run`], calling `measure` with the server and the [`Traffic`] so far once every `period` of
/// `net`'s clock (the first time right after binding), and once more when it stops: how a metrics
/// endpoint gets a fresh snapshot of the relay's counters without reaching into the loop.
pub async fn run_measured<N: Network>(
    net: &N,
    server: Server,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
    period: Duration,
    measure: impl FnMut(&Server, &Traffic),
) -> Result<Server, RuntimeError> {
    run_loop(
        net,
        server,
        listen,
        shutdown,
        &mut |_| {},
        Some((period, measure)),
    )
    .await
}

/// Datagrams and bytes the relay's sockets received and sent, counted by the runtime (the core
/// counts what it did with them, [`crate::Stats`]). The client side is the listening socket;
/// the peer side is every relay socket. Bytes are UDP payload bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Datagrams received from clients.
    pub client_datagrams_received: u64,
    /// Bytes received from clients.
    pub client_bytes_received: u64,
    /// Datagrams sent to clients.
    pub client_datagrams_sent: u64,
    /// Bytes sent to clients.
    pub client_bytes_sent: u64,
    /// Datagrams received from peers on relay sockets.
    pub peer_datagrams_received: u64,
    /// Bytes received from peers on relay sockets.
    pub peer_bytes_received: u64,
    /// Datagrams sent to peers from relay sockets.
    pub peer_datagrams_sent: u64,
    /// Bytes sent to peers from relay sockets.
    pub peer_bytes_sent: u64,
}

impl Traffic {
    fn received(&mut self, listen_port: u16, local: SocketAddr, len: usize) {
        let len = len as u64;
        if local.port() == listen_port {
            self.client_datagrams_received += 1;
            self.client_bytes_received += len;
        } else {
            self.peer_datagrams_received += 1;
            self.peer_bytes_received += len;
        }
    }

    fn sent(&mut self, listen_port: u16, src: SocketAddr, len: usize) {
        let len = len as u64;
        if src.port() == listen_port {
            self.client_datagrams_sent += 1;
            self.client_bytes_sent += len;
        } else {
            self.peer_datagrams_sent += 1;
            self.peer_bytes_sent += len;
        }
    }
}

async fn run_loop<N: Network, M: FnMut(&Server, &Traffic)>(
    net: &N,
    mut server: Server,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
    observe: &mut impl FnMut(&Server),
    mut measure: Option<(Duration, M)>,
) -> Result<Server, RuntimeError> {
    let socket = net
        .bind(listen)
        .await
        .map_err(|source| RuntimeError::Bind {
            addr: listen,
            source,
        })?;
    let listen_local = socket.local_addr().unwrap_or(listen);
    info!(target: "relay", listen = %listen_local, public_ip = %server.config().public_ip, "relay listening");

    let (tx, mut rx) = mpsc::channel::<Inbound>(4096);
    let mut sockets: BTreeMap<u16, Bound<N::Socket>> = BTreeMap::new();
    let socket = Arc::new(socket);
    let reader = spawn_reader(socket.clone(), listen_local, tx.clone());
    sockets.insert(listen_local.port(), Bound { socket, reader });

    let listen_port = listen_local.port();
    let mut traffic = Traffic::default();
    let mut next_measure = measure.as_ref().map(|_| net.now());

    tokio::pin!(shutdown);
    loop {
        flush(
            net,
            &mut server,
            &mut sockets,
            listen.ip(),
            &tx,
            (&mut traffic, listen_port),
        )
        .await;
        let deadline = server.poll_timeout();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = sleep(net, next_measure) => {
                if let Some((period, measure)) = &mut measure {
                    measure(&server, &traffic);
                    next_measure = Some(net.now() + *period);
                }
                continue;
            }
            () = sleep(net, deadline) => {
                let now = net.now();
                server.set_unix_time(now, net.unix_time());
                server.handle_timeout(now);
            }
            inbound = rx.recv() => {
                let Some(first) = inbound else { break };
                let now = net.now();
                traffic.received(listen_port, first.local, first.bytes.len());
                server.handle_input(now, first.from, first.local, &first.bytes);
                for _ in 1..BATCH {
                    let Ok(next) = rx.try_recv() else { break };
                    traffic.received(listen_port, next.local, next.bytes.len());
                    server.handle_input(now, next.from, next.local, &next.bytes);
                }
            }
        }
        observe(&server);
    }
    for bound in sockets.values() {
        bound.reader.abort();
    }
    if let Some((_, measure)) = &mut measure {
        measure(&server, &traffic);
    }
    info!(target: "relay", stats = ?server.stats(), ?traffic, "relay stopped");
    Ok(server)
}

async fn sleep<N: Network>(net: &N, deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => net.sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Applies events (binding and closing relay sockets), then sends every pending transmit.
async fn flush<N: Network>(
    net: &N,
    server: &mut Server,
    sockets: &mut BTreeMap<u16, Bound<N::Socket>>,
    bind_ip: std::net::IpAddr,
    tx: &mpsc::Sender<Inbound>,
    (traffic, listen_port): (&mut Traffic, u16),
) {
    while let Some(event) = server.poll_event() {
        match event {
            Event::AllocationCreated { relay, .. } => {
                let addr = SocketAddr::new(bind_ip, relay.port());
                match net.bind(addr).await {
                    Ok(socket) => {
                        debug!(target: "relay", %addr, "relay socket bound");
                        let socket = Arc::new(socket);
                        let reader = spawn_reader(socket.clone(), addr, tx.clone());
                        sockets.insert(relay.port(), Bound { socket, reader });
                    }
                    Err(error) => {
                        warn!(target: "relay", %addr, %error, "cannot bind relay port; releasing the allocation");
                        server.relay_port_unusable(relay.port());
                    }
                }
            }
            Event::AllocationFreed { relay, .. } => {
                if let Some(bound) = sockets.remove(&relay.port()) {
                    bound.reader.abort();
                    debug!(target: "relay", port = relay.port(), "relay socket closed");
                }
            }
        }
    }
    while let Some(Transmit { src, dst, payload }) = server.poll_transmit() {
        let Some(bound) = sockets.get(&src.port()) else {
            debug!(target: "relay", %src, %dst, "no socket for transmit; dropped");
            continue;
        };
        match bound.socket.send_to(&payload, dst).await {
            Ok(_) => traffic.sent(listen_port, src, payload.len()),
            Err(error) => debug!(target: "relay", %src, %dst, %error, "send failed"),
        }
    }
}

fn spawn_reader<S: UdpSocketLike>(
    socket: Arc<S>,
    local: SocketAddr,
    tx: mpsc::Sender<Inbound>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0; MAX_DATAGRAM];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((len, from)) => {
                    let bytes = buf.get(..len).unwrap_or_default().to_vec();
                    trace!(target: "relay", %local, %from, len, "datagram received");
                    if tx.send(Inbound { local, from, bytes }).await.is_err() {
                        return;
                    }
                }
                // ICMP errors reported on the socket: the next datagram is unaffected.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    trace!(target: "relay", %local, %error, "ignoring ICMP error");
                }
                Err(error) => {
                    warn!(target: "relay", %local, %error, "receive failed; closing socket reader");
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TokioNetwork;
    use crate::Config;

    #[tokio::test]
    async fn answers_binding_and_stops_on_shutdown() {
        let net = TokioNetwork::default();
        let listen = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = Config::new("r", "s", std::net::Ipv4Addr::LOCALHOST);
        config.relay_ports = 20_000..=20_099;
        config.listen_port = listen.port();
        let server = Server::new(config, [0; 32], net.now(), net.unix_time()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(async move {
            run(&net, server, listen, async {
                let _ = stopped.await;
            })
            .await
        });

        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut request = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(&[5; 12]);
        let mut buf = [0; 1500];
        let response = loop {
            client.send_to(&request, listen).await.unwrap();
            let recv = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                client.recv_from(&mut buf),
            );
            if let Ok(Ok((n, from))) = recv.await {
                assert_eq!(from, listen);
                break buf[..n].to_vec();
            }
        };
        assert_eq!(&response[..2], [0x01, 0x01]);
        assert_eq!(&response[8..20], [5; 12]);

        stop.send(()).unwrap();
        let server = relay.await.unwrap().unwrap();
        assert!(server.stats().requests >= 1);
    }
}
