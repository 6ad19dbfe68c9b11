//! A socket wrapper that applies [`Faults`] to what it sends and receives.
//!
//! Wrap a public host's socket (a relay's, a resource's, a node's without NAT) to drop, delay,
//! duplicate or reorder its datagrams, or only one class of them. Sends that are delayed go out
//! from a spawned task; receives that are delayed wait in a queue inside the wrapper, so
//! `recv_from` stays cancel-safe. Must run inside a turmoil host (or any tokio `LocalSet`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::faults::{Direction, Faults};
use super::later::Later;
use super::lock;
use super::scratch::Scratch;

/// Datagrams held back, with where they came from or go to.
type Delayed = Later<Instant, (SocketAddr, Vec<u8>)>;

/// A socket whose traffic goes through [`Faults`]. Implements the node's
/// [`node::runtime::DatagramSocket`] and the relay's [`relay_sim::net::UdpSocketLike`] when the
/// wrapped socket does.
#[derive(Debug)]
pub struct FaultySocket<S> {
    inner: Arc<S>,
    faults: Faults,
    /// Received datagrams held back.
    delayed: Mutex<Delayed>,
    /// Datagrams to send later (see [`Later`]).
    outbox: Arc<Mutex<Delayed>>,
    scratch: Scratch,
}

impl<S> FaultySocket<S> {
    /// Wraps `inner`; keep a clone of `faults` to change them while the socket is in use.
    pub fn new(inner: S, faults: Faults) -> Self {
        Self {
            inner: Arc::new(inner),
            faults,
            delayed: Mutex::new(Delayed::default()),
            outbox: Arc::new(Mutex::new(Delayed::default())),
            scratch: Scratch::default(),
        }
    }

    /// The wrapped socket.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The faults applied.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Queues a received datagram for later.
    fn hold(&self, after: Duration, from: SocketAddr, bytes: &[u8]) {
        lock(&self.delayed).hold(Instant::now() + after, (from, bytes.to_vec()));
    }

    /// When the next held datagram is due.
    fn next_due(&self) -> Option<Instant> {
        lock(&self.delayed).next_due()
    }

    /// Copies the first due datagram into `buf`.
    fn pop_due(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let (from, bytes) = lock(&self.delayed).pop_due(Instant::now())?;
        Some((copy(&bytes, buf), from))
    }

    /// Applies the ingress faults to a datagram just received: `Some` if it is handed out now.
    fn admit(
        &self,
        bytes: &[u8],
        from: SocketAddr,
        local: SocketAddr,
        buf: &mut [u8],
    ) -> Option<(usize, SocketAddr)> {
        let mut now = None;
        for delay in self
            .faults
            .decide(Direction::Ingress, bytes, local, from)
            .delays()
        {
            if delay.is_zero() && now.is_none() {
                now = Some((copy(bytes, buf), from));
            } else {
                self.hold(delay, from, bytes);
            }
        }
        now
    }
}

fn copy(bytes: &[u8], buf: &mut [u8]) -> usize {
    let len = bytes.len().min(buf.len());
    buf[..len].copy_from_slice(&bytes[..len]);
    len
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => super::timers::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Defines the receive and send paths for one socket trait: the two traits are alike but
/// distinct (the relay's demands `Send` futures), so the bodies are generated for each.
macro_rules! fault_paths {
    ($recv:ident, $send:ident, $trait:path, $spawn:path) => {
        impl<S: $trait + 'static> FaultySocket<S> {
            async fn $recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
                use $trait as Socket;
                let local = Socket::local_addr(&*self.inner)?;
                let mut scratch = self.scratch.lend(buf.len());
                loop {
                    if let Some(ready) = self.pop_due(buf) {
                        return Ok(ready);
                    }
                    let due = self.next_due();
                    tokio::select! {
                        biased;
                        () = sleep_until(due) => {}
                        received = Socket::recv_from(&*self.inner, &mut scratch) => {
                            let (n, from) = received?;
                            let bytes = scratch.get(..n).unwrap_or_default();
                            if let Some(ready) = self.admit(bytes, from, local, buf) {
                                return Ok(ready);
                            }
                        }
                    }
                }
            }

            async fn $send(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
                use $trait as Socket;
                let local = Socket::local_addr(&*self.inner)?;
                let verdict = self.faults.decide(Direction::Egress, buf, local, dst);
                for delay in verdict.delays() {
                    if delay.is_zero() {
                        Socket::send_to(&*self.inner, buf, dst).await?;
                        continue;
                    }
                    lock(&self.outbox).hold(Instant::now() + delay, (dst, buf.to_vec()));
                    let (inner, outbox) = (Arc::clone(&self.inner), Arc::clone(&self.outbox));
                    $spawn(async move {
                        $crate::turmoil_net::timers::sleep(delay).await;
                        loop {
                            let due = lock(&outbox).pop_due(Instant::now());
                            let Some((dst, bytes)) = due else { break };
                            if let Err(error) = Socket::send_to(&*inner, &bytes, dst).await {
                                tracing::debug!(%dst, %error, "delayed send failed");
                            }
                        }
                    });
                }
                Ok(buf.len())
            }
        }
    };
}

fault_paths!(
    recv_node,
    send_node,
    node::runtime::DatagramSocket,
    tokio::task::spawn_local
);
fault_paths!(
    recv_relay,
    send_relay,
    relay_sim::net::UdpSocketLike,
    tokio::spawn
);

impl<S: node::runtime::DatagramSocket + 'static> node::runtime::DatagramSocket for FaultySocket<S> {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        node::runtime::DatagramSocket::local_addr(&*self.inner)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.recv_node(buf)
    }

    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.send_node(buf, dst)
    }
}

impl<S: relay_sim::net::UdpSocketLike> relay_sim::net::UdpSocketLike for FaultySocket<S> {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        relay_sim::net::UdpSocketLike::local_addr(&*self.inner)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        self.recv_relay(buf)
    }

    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        self.send_relay(buf, target)
    }
}

/// A relay network whose every socket is a [`FaultySocket`] sharing one [`Faults`].
#[derive(Debug, Clone)]
pub struct FaultyNetwork<N> {
    inner: N,
    faults: Faults,
}

impl<N> FaultyNetwork<N> {
    /// Wraps `inner`.
    pub fn new(inner: N, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

impl<N: relay_sim::net::Network> relay_sim::net::Network for FaultyNetwork<N> {
    type Socket = FaultySocket<N::Socket>;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Socket> {
        let socket = self.inner.bind(addr).await?;
        Ok(FaultySocket::new(socket, self.faults.clone()))
    }

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }

    fn unix_time(&self) -> u64 {
        self.inner.unix_time()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> impl Future<Output = ()> {
        self.inner.sleep_until(deadline)
    }
}
