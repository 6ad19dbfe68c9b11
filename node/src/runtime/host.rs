//! The host's side of a node: its UDP socket (reporting the address datagrams arrive on) and
//! the driver that runs an engine on a TUN device until a signal or a fatal portal error.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use anyhow::Context as _;
use node_core::engine::Engine;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Notify};

use super::netlink::NetworkWatcher;
use super::{
    run_with_crypto, BatchSocket, Command, CryptoPool, PortalConnector, TokioClock, TunDevice,
    WebSocketLink,
};

/// Binds the UDP socket of a node to `listen`, reporting to the event loop the host address
/// datagrams arrive on.
///
/// The loop hands the engine one local address for every datagram, and the engine's ICE agent
/// pairs candidates by it: a socket bound to `0.0.0.0` must not report `0.0.0.0`, or no pair
/// with a host candidate ever succeeds. So a socket bound to the unspecified address reports the
/// address of the interface that routes to `toward` (the portal: the primary interface), and
/// that is the host candidate advertised. Datagrams arriving on other interfaces are attributed
/// to it too, which is why they are not advertised unless asked for (`--advertise`).
pub async fn bind_host_socket(listen: SocketAddr, toward: &str) -> anyhow::Result<BatchSocket> {
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .with_context(|| format!("cannot bind UDP {listen}"))?;
    let bound = socket.local_addr()?;
    let socket = BatchSocket::new(socket).context("cannot set up the UDP socket")?;
    if bound.ip().is_unspecified() {
        socket.report_local_addr(SocketAddr::new(
            primary_ip(toward, bound).await?,
            bound.port(),
        ));
    }
    Ok(socket)
}

/// How a node's local addresses follow the host's network (see [`follow_network`]).
pub struct HostAddresses<F> {
    /// Where the host address is taken toward, as in [`bind_host_socket`] (the portal).
    pub toward: String,
    /// The local addresses peers may reach the node on, for a host address (the host
    /// candidate and the ones the user adds: [`crate::cli::local_addresses`]).
    pub addresses: F,
}

/// Follows the host address of `socket` while the host's network changes (a new address from
/// DHCP, another network, a route that moved): the socket reports the new address for what
/// it receives, and the engine is told ([`Engine::handle_network_change`]), through
/// `commands`. Never returns. A socket bound to one address follows nothing: that address is
/// the node's, or the socket is useless anyway.
///
/// Without it, a node whose address changed keeps advertising the old one, its relays keep an
/// allocation it can no longer reach, and its portal connection waits for a heartbeat to time
/// out; traffic recovers only as WireGuard and ICE notice, one connection at a time.
async fn follow_network<E: Engine, F: Fn(SocketAddr) -> Vec<SocketAddr>>(
    socket: &BatchSocket,
    host: &HostAddresses<F>,
    commands: mpsc::UnboundedSender<Command<E>>,
) -> Infallible {
    let bound = socket.bound_addr();
    if !bound.ip().is_unspecified() {
        return std::future::pending::<Infallible>().await;
    }
    let mut watcher = match NetworkWatcher::new() {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the host's network: a new local address will not be noticed");
            return std::future::pending::<Infallible>().await;
        }
    };
    loop {
        if let Err(error) = watcher.changed().await {
            tracing::warn!(%error, "watching the host's network failed: a new local address will not be noticed");
            return std::future::pending::<Infallible>().await;
        }
        let ip = match primary_ip(&host.toward, bound).await {
            Ok(ip) => ip,
            // No route to the portal (the network is down): the next change may bring one.
            Err(error) => {
                tracing::debug!(error = format!("{error:#}"), "no host address for now");
                continue;
            }
        };
        let reported = socket.reported_local_addr();
        if ip == reported.ip() {
            continue;
        }
        let local = SocketAddr::new(ip, bound.port());
        let addrs = (host.addresses)(local);
        tracing::info!(from = %reported.ip(), to = %ip, "The host address changed");
        socket.report_local_addr(local);
        let command: Command<E> =
            Box::new(move |engine: &mut E, now| engine.handle_network_change(&addrs, now));
        if commands.send(command).is_err() {
            return std::future::pending::<Infallible>().await;
        }
    }
}

/// The local IP the kernel would send from to reach `toward` (`host:port`), in the family of
/// `bound`. Connecting a UDP socket sends nothing.
async fn primary_ip(toward: &str, bound: SocketAddr) -> anyhow::Result<IpAddr> {
    let target = tokio::net::lookup_host(toward)
        .await
        .with_context(|| format!("cannot resolve {toward}"))?
        .find(|a| a.is_ipv4() == bound.is_ipv4())
        .with_context(|| format!("{toward} has no address of the family of {bound}"))?;
    let any: SocketAddr = if bound.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = tokio::net::UdpSocket::bind(any).await?;
    probe
        .connect(target)
        .await
        .with_context(|| format!("no route to the portal {target}"))?;
    Ok(probe.local_addr()?.ip())
}

/// Raised from inside the loop when the node must stop (the portal session failed for good).
#[derive(Debug, Clone, Default)]
pub struct Fatal(Rc<(Notify, RefCell<Option<String>>)>);

impl Fatal {
    /// Asks the driver to stop, with the reason to tell the user.
    pub fn raise(&self, reason: String) {
        self.0 .1.borrow_mut().get_or_insert(reason);
        self.0 .0.notify_one();
    }

    async fn wait(&self) -> String {
        self.0 .0.notified().await;
        self.0 .1.borrow().clone().unwrap_or_default()
    }
}

/// Runs `engine` until SIGINT or SIGTERM (`Ok`), a [`Fatal`] error or an I/O failure (`Err`),
/// with its crypto on `crypto`, its local addresses following the host's network as `host`
/// says. Must run inside a `LocalSet` (the portal link spawns local tasks).
pub async fn drive<E: Engine, F: Fn(SocketAddr) -> Vec<SocketAddr>>(
    engine: &mut E,
    socket: &BatchSocket,
    host: &HostAddresses<F>,
    device: &mut TunDevice,
    link: &mut WebSocketLink<PortalConnector>,
    crypto: &CryptoPool,
    fatal: &Fatal,
) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let (commands_tx, mut commands) = mpsc::unbounded_channel::<Command<E>>();
    let looped = run_with_crypto(
        engine,
        socket,
        &TokioClock,
        device,
        link,
        &mut commands,
        crypto,
    );
    tokio::pin!(looped);
    let mut follow = Box::pin(follow_network(socket, host, commands_tx.clone()));
    let outcome = tokio::select! {
        result = &mut looped => return result.context("the event loop failed"),
        never = &mut follow => match never {},
        _ = sigint.recv() => Ok("SIGINT"),
        _ = sigterm.recv() => Ok("SIGTERM"),
        reason = fatal.wait() => Err(reason),
    };
    // Closing the command channel ends the loop at its next turn.
    drop(follow);
    drop(commands_tx);
    looped.await.context("the event loop failed")?;
    match outcome {
        Ok(signal) => {
            tracing::info!(signal, "Stopped");
            Ok(())
        }
        Err(reason) => Err(anyhow::anyhow!(
            "the portal session failed for good: {reason}"
        )),
    }
}
