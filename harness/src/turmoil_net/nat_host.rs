//! The NAT as a turmoil host: the [`NatTable`] between an inside socket (where [`NatShim`]s send)
//! and one public socket per public port, with [`Faults`] on the outside link.
//!
//! Register it with `sim.host(name, move || nat.clone().run())`; keep a clone of the
//! [`NatHandle`] in the test driver to send [`NatCommand`]s and read counters and mappings.
//! Faults apply on the WAN side: an outbound datagram is translated first (its mapping is created
//! or refreshed) and then may be lost; an inbound one may be lost or delayed before it reaches
//! the table.
//!
//! [`NatShim`]: super::NatShim

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use turmoil::net::UdpSocket;

use super::faults::{Direction, Faults, Verdict};
use super::later::Later;
use super::shim::{decapsulate, encapsulate};
use super::turmoil_io::bindable;
use super::{sim_time, Trace};
use crate::nat::{MappingInfo, NatConfig, NatStats, NatTable};

/// Largest datagram forwarded.
const MAX_DATAGRAM: usize = 65_536;

/// A change ordered by the test driver, applied when the NAT host next runs (within the next
/// `sim.step()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatCommand {
    /// Removes every mapping.
    FlushAll,
    /// Changes the mapping timeout (live mappings included).
    SetTimeout(Duration),
    /// Removes every mapping of one inside host.
    ExpireHost(IpAddr),
}

#[derive(Debug)]
struct Shared {
    name: String,
    table: RefCell<NatTable>,
    commands: RefCell<VecDeque<NatCommand>>,
    wake: Notify,
    faults: Faults,
    trace: Trace,
}

/// A NAT box: its configuration, its table, and the handle the test driver keeps. Clones share
/// the same NAT.
#[derive(Debug, Clone)]
pub struct NatHandle {
    shared: Rc<Shared>,
}

/// A datagram that arrived on a public port.
struct Inbound {
    port: u16,
    from: SocketAddr,
    bytes: Vec<u8>,
    /// Already went through the ingress faults (it was delayed).
    faulted: bool,
}

impl NatHandle {
    /// A NAT named `name` (its turmoil host name, used in the trace), forwarding through
    /// `faults` (give `Faults::new(seed)` and set nothing for a perfect link).
    pub fn new(name: impl Into<String>, config: NatConfig, faults: Faults, trace: Trace) -> Self {
        Self {
            shared: Rc::new(Shared {
                name: name.into(),
                table: RefCell::new(NatTable::new(config)),
                commands: RefCell::new(VecDeque::new()),
                wake: Notify::new(),
                faults,
                trace,
            }),
        }
    }

    /// Where inside hosts send: the NAT's IP and inside port.
    pub fn inside_addr(&self) -> SocketAddr {
        let table = self.shared.table.borrow();
        SocketAddr::new(table.config().public_ip, table.config().inside_port)
    }

    /// The NAT's public IP.
    pub fn public_ip(&self) -> IpAddr {
        self.shared.table.borrow().config().public_ip
    }

    /// Queues `command`; the NAT applies it when it next runs.
    pub fn command(&self, command: NatCommand) {
        self.shared.commands.borrow_mut().push_back(command);
        self.shared.wake.notify_one();
    }

    /// The counters.
    pub fn stats(&self) -> NatStats {
        self.shared.table.borrow().stats()
    }

    /// The live mappings.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.shared.table.borrow().mappings()
    }

    /// The faults on the outside link.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The NAT host's software. A restart (`sim.bounce`) loses every mapping, like a reboot.
    pub async fn run(self) -> turmoil::Result {
        let mut host = Host::start(self).await?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            host.apply_commands();
            host.record_events();
            let deadline = host.nat.shared.table.borrow().poll_timeout();
            tokio::select! {
                biased;
                () = host.nat.shared.wake.notified() => {}
                received = host.inside.recv_from(&mut buf) => {
                    let (n, from) = received?;
                    host.outbound(from, buf.get(..n).unwrap_or_default()).await;
                }
                Some(inbound) = host.inbound_rx.recv() => host.inbound(inbound).await,
                () = sleep_until(deadline) => {
                    host.nat.shared.table.borrow_mut().handle_timeout(sim_time());
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Duration>) {
    match deadline {
        Some(deadline) => super::timers::sleep(deadline.saturating_sub(sim_time())).await,
        None => std::future::pending().await,
    }
}

/// The running NAT: its sockets.
struct Host {
    nat: NatHandle,
    inside: Rc<UdpSocket>,
    public: BTreeMap<u16, Rc<UdpSocket>>,
    inbound_tx: mpsc::UnboundedSender<Inbound>,
    inbound_rx: mpsc::UnboundedReceiver<Inbound>,
    /// Inbound datagrams the ingress faults delayed (see [`Later`]).
    later_in: Rc<RefCell<Later<Duration, Inbound>>>,
    /// Outbound datagrams the egress faults delayed.
    later_out: Rc<RefCell<Outbox>>,
}

/// Datagrams to send later, with the public socket each leaves from.
type Outbox = Later<Duration, (Rc<UdpSocket>, SocketAddr, Vec<u8>)>;

impl Host {
    async fn start(nat: NatHandle) -> io::Result<Self> {
        // A (re)start begins with an empty table; the counters carry on.
        nat.shared.table.borrow_mut().flush();
        let inside = Rc::new(UdpSocket::bind(bindable(nat.inside_addr())).await?);
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        Ok(Self {
            nat,
            inside,
            public: BTreeMap::new(),
            inbound_tx,
            inbound_rx,
            later_in: Rc::default(),
            later_out: Rc::default(),
        })
    }

    fn apply_commands(&self) {
        loop {
            let Some(command) = self.nat.shared.commands.borrow_mut().pop_front() else {
                return;
            };
            self.nat
                .shared
                .trace
                .record(&self.nat.shared.name, format_args!("command {command:?}"));
            let mut table = self.nat.shared.table.borrow_mut();
            match command {
                NatCommand::FlushAll => table.flush(),
                NatCommand::SetTimeout(timeout) => table.set_timeout(timeout),
                NatCommand::ExpireHost(ip) => table.expire_host(ip),
            }
        }
    }

    fn record_events(&self) {
        loop {
            let Some(event) = self.nat.shared.table.borrow_mut().poll_event() else {
                return;
            };
            tracing::debug!(nat = %self.nat.shared.name, %event);
            self.nat.shared.trace.record(&self.nat.shared.name, event);
        }
    }

    /// From an inside host: translate, then forward through the egress faults.
    async fn outbound(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Some((dst, payload)) = decapsulate(datagram) else {
            tracing::debug!(%from, "NAT: malformed datagram from inside");
            return;
        };
        let translated = self
            .nat
            .shared
            .table
            .borrow_mut()
            .outbound(from, dst, sim_time());
        self.record_events();
        let Some(public) = translated else {
            return;
        };
        self.nat.shared.trace.digest(payload);
        let Some(socket) = self.public_socket(public).await else {
            return;
        };
        let verdict = self
            .nat
            .shared
            .faults
            .decide(Direction::Egress, payload, public, dst);
        send(&self.later_out, socket, payload, dst, verdict).await;
    }

    /// From the outside: ingress faults, then the table.
    async fn inbound(&mut self, inbound: Inbound) {
        if inbound.faulted {
            self.deliver_inside(inbound.port, inbound.from, &inbound.bytes)
                .await;
            return;
        }
        let public = SocketAddr::new(self.nat.public_ip(), inbound.port);
        let verdict =
            self.nat
                .shared
                .faults
                .decide(Direction::Ingress, &inbound.bytes, public, inbound.from);
        for delay in verdict.delays() {
            if delay.is_zero() {
                self.deliver_inside(inbound.port, inbound.from, &inbound.bytes)
                    .await;
                continue;
            }
            let later = Inbound {
                faulted: true,
                bytes: inbound.bytes.clone(),
                ..inbound
            };
            self.later_in.borrow_mut().hold(sim_time() + delay, later);
            let (tx, held) = (self.inbound_tx.clone(), Rc::clone(&self.later_in));
            tokio::task::spawn_local(async move {
                super::timers::sleep(delay).await;
                let due = || held.borrow_mut().pop_due(sim_time());
                while let Some(later) = due() {
                    // The NAT may have restarted meanwhile: then the datagram is lost.
                    let _ = tx.send(later);
                }
            });
        }
    }

    async fn deliver_inside(&mut self, port: u16, from: SocketAddr, bytes: &[u8]) {
        let inside = self
            .nat
            .shared
            .table
            .borrow_mut()
            .inbound(port, from, sim_time());
        self.record_events();
        let Some(inside) = inside else {
            return;
        };
        self.nat.shared.trace.digest(bytes);
        if let Err(error) = self.inside.send_to(&encapsulate(from, bytes), inside).await {
            tracing::debug!(%inside, %error, "NAT: send to inside failed");
        }
    }

    /// The socket of public port `public.port()`, bound (with its reader task) on first use and
    /// kept for the NAT's life: a datagram to a port whose mapping expired reaches the table,
    /// which drops it.
    async fn public_socket(&mut self, public: SocketAddr) -> Option<Rc<UdpSocket>> {
        if let Some(socket) = self.public.get(&public.port()) {
            return Some(Rc::clone(socket));
        }
        let socket = match UdpSocket::bind(bindable(public)).await {
            Ok(socket) => Rc::new(socket),
            Err(error) => {
                tracing::warn!(%public, %error, "NAT: cannot bind public port");
                return None;
            }
        };
        let (reader, tx, port) = (Rc::clone(&socket), self.inbound_tx.clone(), public.port());
        tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = reader.recv_from(&mut buf).await {
                let bytes = buf.get(..n).unwrap_or_default().to_vec();
                let inbound = Inbound {
                    port,
                    from,
                    bytes,
                    faulted: false,
                };
                if tx.send(inbound).is_err() {
                    return;
                }
            }
        });
        self.public.insert(public.port(), Rc::clone(&socket));
        Some(socket)
    }
}

/// Sends `bytes` (and any duplicate) as `verdict` says: now, or later from a task.
async fn send(
    outbox: &Rc<RefCell<Outbox>>,
    socket: Rc<UdpSocket>,
    bytes: &[u8],
    dst: SocketAddr,
    verdict: Verdict,
) {
    for delay in verdict.delays() {
        if delay.is_zero() {
            if let Err(error) = socket.send_to(bytes, dst).await {
                tracing::debug!(%dst, %error, "NAT: send failed");
            }
            continue;
        }
        let item = (Rc::clone(&socket), dst, bytes.to_vec());
        outbox.borrow_mut().hold(sim_time() + delay, item);
        let outbox = Rc::clone(outbox);
        tokio::task::spawn_local(async move {
            super::timers::sleep(delay).await;
            let due = || outbox.borrow_mut().pop_due(sim_time());
            while let Some((socket, dst, bytes)) = due() {
                if let Err(error) = socket.send_to(&bytes, dst).await {
                    tracing::debug!(%dst, %error, "NAT: delayed send failed");
                }
            }
        });
    }
}
