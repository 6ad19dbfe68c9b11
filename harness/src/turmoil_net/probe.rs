//! Small hosts for tests and toy worlds: a reflector (an echo that tells the sender which source
//! address it saw, like a STUN binding) and a probe (sends on command, records what it receives).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use node::runtime::DatagramSocket;
use tokio::sync::Notify;

use super::shim::{decapsulate, encapsulate};
use super::{sim_time, Trace};

/// Largest datagram handled.
const MAX_DATAGRAM: usize = 65_536;

/// Answers every datagram with the source address it came from (in the shim header format, see
/// [`observed`]) followed by its payload. Records `reflect <from> <len>` on `name`.
pub async fn reflector<S: DatagramSocket>(socket: S, name: &str, trace: Trace) -> turmoil::Result {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let payload = buf.get(..n).unwrap_or_default();
        trace.record(name, format_args!("reflect {from} {n}"));
        socket.send_to(&encapsulate(from, payload), from).await?;
    }
}

/// The source address a [`reflector`] saw, and the payload it echoed.
pub fn observed(reply: &[u8]) -> Option<(SocketAddr, &[u8])> {
    decapsulate(reply)
}

/// A datagram a probe received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Simulated time of arrival.
    pub at: Duration,
    /// The sender, as the socket reported it.
    pub from: SocketAddr,
    /// The payload.
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    trace: Trace,
    outbox: RefCell<VecDeque<(SocketAddr, Vec<u8>)>>,
    wake: Notify,
    received: RefCell<Vec<Received>>,
}

/// A host socket driven by the test: [`Probe::send`] queues a datagram that goes out when the
/// probe next runs (within the next `sim.step()`); everything received is kept and traced as
/// `rx <local> <- <from> <len>`. Clones share the same probe.
#[derive(Debug, Clone)]
pub struct Probe {
    shared: Rc<Shared>,
}

impl Probe {
    /// A probe named `name` in the trace.
    pub fn new(name: impl Into<String>, trace: Trace) -> Self {
        Self {
            shared: Rc::new(Shared {
                name: name.into(),
                trace,
                outbox: RefCell::new(VecDeque::new()),
                wake: Notify::new(),
                received: RefCell::new(Vec::new()),
            }),
        }
    }

    /// Queues `bytes` to `dst`.
    pub fn send(&self, dst: SocketAddr, bytes: impl Into<Vec<u8>>) {
        self.shared
            .outbox
            .borrow_mut()
            .push_back((dst, bytes.into()));
        self.shared.wake.notify_one();
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.borrow().clone()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.shared.received.borrow_mut().clear();
    }

    /// Runs the probe on `socket` until it fails.
    pub async fn run<S: DatagramSocket>(self, socket: S) -> turmoil::Result {
        let local = socket.local_addr()?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            loop {
                let Some((dst, bytes)) = self.shared.outbox.borrow_mut().pop_front() else {
                    break;
                };
                let name = &self.shared.name;
                self.shared
                    .trace
                    .record(name, format_args!("tx {local} -> {dst} {}", bytes.len()));
                socket.send_to(&bytes, dst).await?;
            }
            tokio::select! {
                biased;
                () = self.shared.wake.notified() => {}
                received = socket.recv_from(&mut buf) => {
                    let (n, from) = received?;
                    let name = &self.shared.name;
                    self.shared.trace.record(name, format_args!("rx {local} <- {from} {n}"));
                    self.shared.received.borrow_mut().push(Received {
                        at: sim_time(),
                        from,
                        bytes: buf.get(..n).unwrap_or_default().to_vec(),
                    });
                }
            }
        }
    }
}
