//! The event loop around a sans-IO engine, generic over the network, the clock and the device.
//!
//! The same loop runs on real sockets, a real TUN device and tokio's clock, or inside the
//! simulation on turmoil's sockets and clock: the engine never knows which. It is thin on
//! purpose: read whatever is ready, hand it to the engine, write out what the engine produced,
//! sleep until the engine's next deadline.

mod control;
mod engines;
mod portal_driver;
mod tokio_io;
mod tun;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::pool::Buffer;
use crate::Transmit;

pub use control::{
    Connector, ControlCommand, ControlInput, ControlLink, NoControl, WebSocketLink, CONNECT_TIMEOUT,
};
pub use engines::{ClientEngine, EngineEvent, GatewayEngine};
pub use portal_driver::PortalDriver;
pub use tokio_io::{TcpConnector, TokioClock, TokioSocket};
pub use tun::{TunConfig, TunDevice};

/// A bound UDP socket.
pub trait DatagramSocket {
    /// The address it is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Receives one datagram. Must be cancel-safe: the loop drops the future when something
    /// else is ready first.
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>>;
    /// Sends one datagram.
    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>>;
}

/// The monotonic clock the engine is driven with.
pub trait Clock {
    /// Now, as a std `Instant` (a simulation converts its own).
    fn now(&self) -> Instant;
    /// Waits until `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;
}

/// Where IP packets enter and leave the tunnel: a TUN device, or a channel in the simulation.
pub trait Device {
    /// The next packet from the device; `None` when it is closed.
    fn recv(&mut self) -> impl Future<Output = Option<Vec<u8>>>;
    /// Writes a packet to the device.
    fn send(&mut self, packet: &[u8]) -> impl Future<Output = io::Result<()>>;
}

/// The sans-IO side: a node, or a client's or gateway's tunnel state around one.
pub trait Engine {
    /// A datagram arrived on `local` from `from`.
    fn handle_datagram(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8], now: Instant);
    /// An IP packet came from the device.
    fn handle_device_packet(&mut self, packet: Vec<u8>, now: Instant);
    /// A deadline from [`Engine::poll_timeout`] passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The next deadline.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next IP packet for the device.
    fn poll_device_packet(&mut self) -> Option<Buffer>;
    /// Something happened on the link to the portal.
    fn handle_control(&mut self, input: ControlInput, now: Instant) {
        let _ = (input, now);
    }
    /// The next thing for the link to the portal to do.
    fn poll_control(&mut self) -> Option<ControlCommand> {
        None
    }
}

/// A change applied to the engine from outside the loop (control plane, test driver), with the
/// loop's `now`.
pub type Command<E> = Box<dyn FnOnce(&mut E, Instant)>;

/// Why the loop ended.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Receiving from the socket failed.
    #[error("receiving from the UDP socket: {0}")]
    Receive(io::Error),
    /// Writing to the device failed.
    #[error("writing to the device: {0}")]
    Device(io::Error),
}

/// Runs `engine` until the command channel closes (a clean stop) or I/O fails.
pub async fn run<E, S, C, D, L>(
    engine: &mut E,
    socket: &S,
    clock: &C,
    device: &mut D,
    control: &mut L,
    commands: &mut mpsc::UnboundedReceiver<Command<E>>,
) -> Result<(), RunError>
where
    E: Engine,
    S: DatagramSocket,
    C: Clock,
    D: Device,
    L: ControlLink,
{
    let local = socket.local_addr().map_err(RunError::Receive)?;
    let mut buf = vec![0u8; crate::pool::BUFFER_SIZE];
    let mut device_open = true;
    loop {
        flush(engine, socket, device).await?;
        while let Some(command) = engine.poll_control() {
            control.apply(command);
        }
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => clock.sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // Control first, then the network (STUN and handshakes must not starve behind a
        // flood from the device), then the device, then timers.
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(command) => command(engine, clock.now()),
                None => return Ok(()),
            },
            input = control.recv() => engine.handle_control(input, clock.now()),
            received = socket.recv_from(&mut buf) => {
                let (n, from) = received.map_err(RunError::Receive)?;
                engine.handle_datagram(local, from, &buf[..n], clock.now());
            }
            packet = device.recv(), if device_open => match packet {
                Some(packet) => engine.handle_device_packet(packet, clock.now()),
                None => device_open = false,
            },
            () = sleep => engine.handle_timeout(clock.now()),
        }
    }
}

async fn flush<E: Engine, S: DatagramSocket, D: Device>(
    engine: &mut E,
    socket: &S,
    device: &mut D,
) -> Result<(), RunError> {
    while let Some(transmit) = engine.poll_transmit() {
        // A send that fails (unreachable network, full buffer) is a lost datagram, which every
        // protocol above copes with.
        if let Err(error) = socket.send_to(&transmit.payload, transmit.dst).await {
            tracing::debug!(dst = %transmit.dst, %error, "send failed");
        }
    }
    while let Some(packet) = engine.poll_device_packet() {
        device.send(&packet).await.map_err(RunError::Device)?;
    }
    Ok(())
}

/// A device made of two channels: packets written to it come out of `outgoing`, packets sent
/// into `incoming` are read from it. The simulation's and the tests' stand-in for a TUN device.
#[derive(Debug)]
pub struct ChannelDevice {
    incoming: mpsc::UnboundedReceiver<Vec<u8>>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
}

impl ChannelDevice {
    /// The device, the sender feeding it, and the receiver of what it writes.
    pub fn new() -> (
        Self,
        mpsc::UnboundedSender<Vec<u8>>,
        mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        (
            Self {
                incoming: in_rx,
                outgoing: out_tx,
            },
            in_tx,
            out_rx,
        )
    }
}

impl Device for ChannelDevice {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        self.incoming.recv().await
    }

    async fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        // Nobody reading is a device nobody looks at, not an error of the tunnel.
        let _ = self.outgoing.send(packet.to_vec());
        Ok(())
    }
}
