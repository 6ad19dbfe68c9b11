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
use std::time::Instant;

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
    mut server: Server,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
    mut observe: impl FnMut(&Server),
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

    tokio::pin!(shutdown);
    loop {
        flush(net, &mut server, &mut sockets, listen.ip(), &tx).await;
        let deadline = server.poll_timeout();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = sleep(net, deadline) => {
                let now = net.now();
                server.set_unix_time(now, net.unix_time());
                server.handle_timeout(now);
            }
            inbound = rx.recv() => {
                let Some(first) = inbound else { break };
                let now = net.now();
                server.handle_input(now, first.from, first.local, &first.bytes);
                for _ in 1..BATCH {
                    let Ok(next) = rx.try_recv() else { break };
                    server.handle_input(now, next.from, next.local, &next.bytes);
                }
            }
        }
        observe(&server);
    }
    for bound in sockets.values() {
        bound.reader.abort();
    }
    info!(target: "relay", stats = ?server.stats(), "relay stopped");
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
        if let Err(error) = bound.socket.send_to(&payload, dst).await {
            debug!(target: "relay", %src, %dst, %error, "send failed");
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
