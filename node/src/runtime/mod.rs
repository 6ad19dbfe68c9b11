//! The event loop around a sans-IO engine, generic over the network, the clock and the device.
//!
//! The same loop runs on real sockets, a real TUN device and tokio's clock, or inside the
//! simulation on turmoil's sockets and clock: the engine never knows which. It is thin on
//! purpose: read whatever is ready, hand it to the engine, write out what the engine produced,
//! sleep until the engine's next deadline.

mod control;
mod crypto;
#[cfg(feature = "host")]
mod host;
#[cfg(feature = "host")]
pub mod metrics;
#[cfg(feature = "host")]
mod netlink;
mod observe;
#[cfg(feature = "host")]
mod tls;
mod tokio_io;
#[cfg(feature = "host")]
mod tun;
#[cfg(feature = "host")]
mod udp;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::mpsc;

use node_core::crypto::Decryption;
use node_core::engine::Engine;
use node_core::pool::Buffer;
use node_core::Transmit;

pub use control::{Connector, ControlLink, NoControl, WebSocketLink, CONNECT_TIMEOUT};
pub use crypto::CryptoPool;
#[cfg(feature = "host")]
pub use host::{bind_host_socket, drive, Fatal, HostAddresses};
pub use observe::Observed;
#[cfg(feature = "host")]
pub use tls::{root_certificates, PortalConnector, PortalStream};
pub use tokio_io::{TcpConnector, TokioClock, TokioSocket};
#[cfg(feature = "host")]
pub use tun::{TunConfig, TunDevice};
#[cfg(feature = "host")]
pub use udp::BatchSocket;

/// A bound UDP socket.
pub trait DatagramSocket {
    /// The address it is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Receives one datagram. Must be cancel-safe: the loop drops the future when something
    /// else is ready first.
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>>;
    /// Sends one datagram.
    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>>;
    /// Waits for datagrams and reads what is ready into `batch` (cleared first), as many as
    /// the platform reads in one call. Must be cancel-safe, like [`DatagramSocket::recv_from`].
    /// The default reads one datagram with `recv_from`.
    fn recv_batch(&self, batch: &mut RecvBatch) -> impl Future<Output = io::Result<()>> {
        async move {
            batch.clear();
            let (n, from) = self.recv_from(batch.buffer(0)).await?;
            batch.push(0, from, n, n);
            Ok(())
        }
    }
    /// Sends `transmits` and leaves the vector empty (a socket may take it over whole), in as
    /// few calls as the platform allows. A datagram that cannot be sent (unreachable network)
    /// is lost, which every protocol above copes with; only waiting for room (in the send
    /// buffer, or a writer's queue) is done here. The default sends them one by one.
    fn send_batch(&self, transmits: &mut Vec<Transmit>) -> impl Future<Output = ()> {
        async move {
            for transmit in transmits.drain(..) {
                if let Err(error) = self.send_to(&transmit.payload, transmit.dst).await {
                    tracing::debug!(dst = %transmit.dst, %error, "send failed");
                }
            }
        }
    }
}

/// Datagrams read in one call: storage for [`RECV_BATCH`] of them, each large enough for a GRO
/// run of segments (a run is one `(from, len, stride)` entry).
#[derive(Debug)]
pub struct RecvBatch {
    buffers: Vec<Vec<u8>>,
    received: Vec<Received>,
    unreachable: Vec<SocketAddr>,
}

/// How many datagrams (or GRO runs) one [`RecvBatch`] holds.
pub const RECV_BATCH: usize = 32;

/// How many destinations the network reported unreachable one [`RecvBatch`] holds; more in
/// one read are dropped (the relays and candidates they are about are few).
pub const UNREACHABLE_BATCH: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Received {
    buffer: usize,
    from: SocketAddr,
    len: usize,
    stride: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Empty, with its buffers allocated once (they are reused for every read).
    pub fn new() -> Self {
        Self {
            buffers: vec![vec![0; node_core::pool::BUFFER_SIZE]; RECV_BATCH],
            received: Vec::with_capacity(RECV_BATCH),
            unreachable: Vec::with_capacity(UNREACHABLE_BATCH),
        }
    }

    /// Forgets what was read.
    pub fn clear(&mut self) {
        self.received.clear();
        self.unreachable.clear();
    }

    /// Records that an ICMP error said `dst` cannot be reached (once per destination, at most
    /// [`UNREACHABLE_BATCH`]); whether it was kept.
    pub fn push_unreachable(&mut self, dst: SocketAddr) -> bool {
        if self.unreachable.contains(&dst) {
            return true;
        }
        if self.unreachable.len() == UNREACHABLE_BATCH {
            return false;
        }
        self.unreachable.push(dst);
        true
    }

    /// The destinations reported unreachable since the batch was cleared.
    pub fn unreachable(&self) -> &[SocketAddr] {
        &self.unreachable
    }

    /// Buffer `i` to read into.
    ///
    /// # Panics
    /// If `i >= RECV_BATCH`.
    pub fn buffer(&mut self, i: usize) -> &mut [u8] {
        &mut self.buffers[i]
    }

    /// All the buffers, to read into at once.
    pub fn buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.buffers
    }

    /// Records that buffer `i` holds `len` bytes from `from`: datagrams of `stride` bytes each
    /// (the last may be shorter), or one datagram when `stride >= len`.
    pub fn push(&mut self, i: usize, from: SocketAddr, len: usize, stride: usize) {
        self.received.push(Received {
            buffer: i,
            from,
            len: len.min(self.buffers[i].len()),
            stride: stride.max(1),
        });
    }

    /// Every datagram read, GRO runs split into their segments.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.received.iter().flat_map(move |r| {
            self.buffers[r.buffer][..r.len]
                .chunks(r.stride)
                .map(move |segment| (r.from, segment))
        })
    }
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
    /// Waits for packets and reads what is ready into `batch` (cleared first); `false` when
    /// the device is closed. Must be cancel-safe. The default reads one with [`Device::recv`].
    fn recv_batch(&mut self, batch: &mut PacketBatch) -> impl Future<Output = bool> {
        async move {
            batch.clear();
            match self.recv().await {
                Some(packet) => {
                    batch.push(&packet);
                    true
                }
                None => false,
            }
        }
    }
    /// Writes `packets` and leaves the vector empty (a device may write into their headroom),
    /// in as few calls as the device allows. The default writes them one by one with
    /// [`Device::send`].
    fn send_batch(&mut self, packets: &mut Vec<Buffer>) -> impl Future<Output = io::Result<()>> {
        async move {
            for packet in packets.drain(..) {
                self.send(&packet).await?;
            }
            Ok(())
        }
    }
}

/// IP packets read from a device in one call, in buffers reused from read to read.
#[derive(Debug, Default)]
pub struct PacketBatch {
    buffers: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    len: usize,
    offset: usize,
}

impl PacketBatch {
    /// `count` buffers of `size` bytes, packets starting `offset` bytes in (room a device
    /// writes a header into).
    pub fn new(count: usize, size: usize, offset: usize) -> Self {
        Self {
            buffers: vec![vec![0; size + offset]; count.max(1)],
            sizes: vec![0; count.max(1)],
            len: 0,
            offset,
        }
    }

    /// Forgets what was read.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends a copy of `packet` (growing the batch if needed: the default, one-packet path).
    pub fn push(&mut self, packet: &[u8]) {
        if self.len == self.buffers.len() {
            self.buffers.push(Vec::new());
            self.sizes.push(0);
        }
        let buffer = &mut self.buffers[self.len];
        buffer.clear();
        buffer.resize(self.offset, 0);
        buffer.extend_from_slice(packet);
        self.sizes[self.len] = packet.len();
        self.len += 1;
    }

    /// Makes room for at least `count` packets of `size` bytes (after the offset), keeping the
    /// buffers it has: a device sizes the loop's batch to what it reads at once.
    pub fn reserve(&mut self, count: usize, size: usize) {
        if self.buffers.len() < count {
            self.buffers.resize_with(count, Vec::new);
            self.sizes.resize(count, 0);
        }
        for buffer in &mut self.buffers {
            if buffer.len() < self.offset + size {
                buffer.resize(self.offset + size, 0);
            }
        }
    }

    /// The buffers, their sizes and the offset, for a device to read into; then [`Self::set_len`].
    pub fn parts_mut(&mut self) -> (&mut [Vec<u8>], &mut [usize], usize) {
        (&mut self.buffers, &mut self.sizes, self.offset)
    }

    /// Records that the first `len` buffers hold packets.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buffers.len());
    }

    /// How many packets it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packets.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.buffers[..self.len]
            .iter()
            .zip(&self.sizes)
            .map(|(buffer, &size)| {
                let end = (self.offset + size).min(buffer.len());
                &buffer[self.offset.min(end)..end]
            })
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

/// Where the AEAD of data packets runs (see [`node_core::crypto`]): on the loop's own thread,
/// or spread over threads. Either way datagrams and packets leave in the order they came.
pub trait Crypto {
    /// Seals every transmit that needs it; the vector holds the same transmits in the same
    /// order after.
    fn seal(&self, transmits: &mut Vec<Transmit>);
    /// Opens every data packet; the vector holds the same packets in the same order after.
    fn open(&self, decryptions: &mut Vec<Decryption>);
}

/// The AEAD on the loop's thread, one packet after the other: the simulation's (one thread,
/// deterministic) and a one-core host's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inline;

impl Crypto for Inline {
    fn seal(&self, transmits: &mut Vec<Transmit>) {
        transmits.iter_mut().for_each(Transmit::seal);
    }

    fn open(&self, decryptions: &mut Vec<Decryption>) {
        decryptions.iter_mut().for_each(Decryption::run);
    }
}

/// Runs `engine` until the command channel closes (a clean stop: [`Engine::close`], and what
/// it queued is sent) or I/O fails, with the AEAD on the loop's thread ([`Inline`]).
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
    run_with_crypto(engine, socket, clock, device, control, commands, &Inline).await
}

/// [`run`], with the AEAD of data packets where `crypto` puts it.
pub async fn run_with_crypto<E, S, C, D, L, K>(
    engine: &mut E,
    socket: &S,
    clock: &C,
    device: &mut D,
    control: &mut L,
    commands: &mut mpsc::UnboundedReceiver<Command<E>>,
    crypto: &K,
) -> Result<(), RunError>
where
    E: Engine,
    S: DatagramSocket,
    C: Clock,
    D: Device,
    L: ControlLink,
    K: Crypto,
{
    engine.set_deferred_crypto(true);
    // Read into buffers allocated once: a whole batch of datagrams or packets per wake-up, so
    // the cost of waking (and of a syscall, where the socket or device batches) is shared by
    // many packets under load.
    let mut datagrams = RecvBatch::new();
    let mut packets = PacketBatch::new(1, node_core::pool::BUFFER_SIZE, 0);
    let mut outgoing = Outgoing::default();
    let mut device_open = true;
    loop {
        // The data packets of the last batch read are opened, and what they produced is
        // written, before the loop waits again.
        open(engine, crypto, &mut outgoing, clock.now());
        flush(engine, socket, device, crypto, &mut outgoing).await?;
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
        // flood from the device), then the device, then timers. Each turn takes at most one
        // batch from the network and one from the device before flushing what they produced.
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(command) => command(engine, clock.now()),
                None => {
                    // A clean stop: what the engine gives back (relay allocations) goes out.
                    engine.close(clock.now());
                    flush(engine, socket, device, crypto, &mut outgoing).await?;
                    return Ok(());
                }
            },
            input = control.recv() => engine.handle_control(input, clock.now()),
            received = socket.recv_batch(&mut datagrams) => {
                received.map_err(RunError::Receive)?;
                // Read for every batch: the host's address may have changed since the last.
                let local = socket.local_addr().map_err(RunError::Receive)?;
                let now = clock.now();
                for (i, (from, bytes)) in datagrams.datagrams().enumerate() {
                    // A batch of GRO runs is up to a thousand packets: written out as they
                    // go, so the packets in flight fit in the engine's buffer pool (beyond
                    // it every packet would be a fresh 64 KiB allocation).
                    if i > 0 && i.is_multiple_of(FLUSH_EVERY) {
                        open(engine, crypto, &mut outgoing, now);
                        flush(engine, socket, device, crypto, &mut outgoing).await?;
                    }
                    engine.handle_datagram(local, from, bytes, now);
                }
                for dst in datagrams.unreachable() {
                    engine.handle_unreachable(*dst, now);
                }
            }
            open = device.recv_batch(&mut packets), if device_open => {
                if open {
                    let now = clock.now();
                    for (i, packet) in packets.packets().enumerate() {
                        if i > 0 && i.is_multiple_of(FLUSH_EVERY) {
                            flush(engine, socket, device, crypto, &mut outgoing).await?;
                        }
                        engine.handle_device_bytes(packet, now);
                    }
                } else {
                    device_open = false;
                }
            },
            () = sleep => engine.handle_timeout(clock.now()),
        }
    }
}

/// Packets handled from one batch between two flushes: large enough for GSO and GRO runs of
/// 64 KiB, well under the engine's buffer pool.
const FLUSH_EVERY: usize = 64;

/// What the engine produced in one turn, gathered to be written in batches; the vectors are
/// reused from turn to turn.
#[derive(Default)]
struct Outgoing {
    transmits: Vec<Transmit>,
    packets: Vec<Buffer>,
    decryptions: Vec<Decryption>,
}

/// Opens the data packets the engine handed out (all at once, so `crypto` can spread them)
/// and gives them back in the order they came.
fn open<E: Engine, K: Crypto>(engine: &mut E, crypto: &K, out: &mut Outgoing, now: Instant) {
    out.decryptions
        .extend(std::iter::from_fn(|| engine.poll_decryption()));
    if out.decryptions.is_empty() {
        return;
    }
    crypto.open(&mut out.decryptions);
    for decryption in out.decryptions.drain(..) {
        engine.handle_decryption(decryption, now);
    }
}

async fn flush<E: Engine, S: DatagramSocket, D: Device, K: Crypto>(
    engine: &mut E,
    socket: &S,
    device: &mut D,
    crypto: &K,
    out: &mut Outgoing,
) -> Result<(), RunError> {
    // Bounded, so a long queue in the engine is written in several batches rather than
    // holding every buffer at once.
    const MAX_BATCH: usize = 256;
    loop {
        while out.transmits.len() < MAX_BATCH {
            match engine.poll_transmit() {
                Some(transmit) => out.transmits.push(transmit),
                None => break,
            }
        }
        while out.packets.len() < MAX_BATCH {
            match engine.poll_device_packet() {
                Some(packet) => out.packets.push(packet),
                None => break,
            }
        }
        if out.transmits.is_empty() && out.packets.is_empty() {
            return Ok(());
        }
        if !out.transmits.is_empty() {
            crypto.seal(&mut out.transmits);
            socket.send_batch(&mut out.transmits).await;
        }
        if !out.packets.is_empty() {
            let written = device.send_batch(&mut out.packets).await;
            out.packets.clear();
            written.map_err(RunError::Device)?;
        }
    }
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
