//! A Linux TUN device (through `tun-rs`) as the event loop's [`Device`], and the interface
//! configuration the client and the gateway apply to it (addresses, routes) with iproute2.
//!
//! The device is not persistent: it disappears when the [`TunDevice`] is dropped, and every
//! address and route on it with it. Configuration runs `ip` from iproute2, which must be on
//! `PATH`; it happens a few times per portal session, never per packet.
//!
//! Offload is on (`DeviceBuilder::offload`: a virtio-net header in front of every packet): the
//! kernel hands over a whole TSO/GSO run of TCP (up to 64 KiB) in one read, split here into
//! MTU-sized packets ([`Device::recv_batch`]), and packets written in one batch are coalesced
//! per TCP flow into one write ([`Device::send_batch`], GRO). Under load this is what divides
//! the number of TUN syscalls, and of trips through the kernel's stack, by tens.
//!
//! Reads run on a thread of their own, like the UDP socket's: splitting a GSO run and the read
//! syscall itself happen beside the event loop that encrypts. Writes happen on the loop, in
//! place: a decrypted packet leaves [`DEVICE_HEADROOM`] bytes in front of it, where the
//! virtio-net header is written, so the packet is never copied on its way to the kernel.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;
use tokio::sync::mpsc;
use tun_rs::{
    ExpandBuffer, GROTable, InterruptEvent, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN,
};

use super::{Device, PacketBatch};
use node_core::pool::{Buffer, DEVICE_HEADROOM};
use node_core::portal::{Interface, IpNetwork};

/// Headroom above the MTU for a read buffer (the kernel never hands us more than the MTU, but
/// the MTU may be raised from outside while we run).
const READ_HEADROOM: usize = 256;

/// Largest packet the kernel hands over in one read with offload (a GSO run), and so the
/// largest a coalesced write may grow to.
const MAX_OFFLOAD: usize = 65_535;

/// Entries of the TUN device's transmit queue with offload on (see [`TunDevice::create`]).
const TX_QUEUE_LEN: u32 = 64;

/// Batches read ahead of the loop: the device's own queue absorbs bursts beyond them.
const READ_AHEAD: usize = 2;

const _: () = assert!(DEVICE_HEADROOM >= VIRTIO_NET_HDR_LEN);

/// A TUN device, removed when dropped.
pub struct TunDevice {
    device: Arc<SyncDevice>,
    name: String,
    /// Whether the kernel accepted offload (packets carry a virtio-net header).
    offload: bool,
    /// Batches from the reader thread.
    inbox: mpsc::Receiver<PacketBatch>,
    /// Read batches handed back to the reader, so reading allocates nothing.
    free: Arc<ArrayQueue<PacketBatch>>,
    stop: Arc<AtomicBool>,
    interrupt: Arc<InterruptEvent>,
    reader: Option<JoinHandle<()>>,
    /// Packets read but not yet handed out by [`Device::recv`] (the one-packet path).
    pending: PacketBatch,
    pending_next: usize,
    /// The packets of one write, virtio-net header in front; reused from write to write.
    writes: Vec<TunWrite>,
    gro: GROTable,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

impl TunDevice {
    /// Creates the TUN device `name` with `mtu`, brings it up and starts its reader thread.
    /// Needs `CAP_NET_ADMIN`.
    pub fn create(name: &str, mtu: u16) -> io::Result<Self> {
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(true)
            .enable(true)
            .build_sync()?;
        // The kernel may have picked the name (a pattern such as `tun%d`).
        let name = device.name()?;
        let offload = device.tcp_gso();
        if offload {
            // The kernel does not count what waits in a TUN queue against the sending socket
            // (the device orphans its packets), and with offload each entry is a TSO run of up
            // to 64 KiB: the default 500 entries would let one TCP flow park megabytes in
            // front of the tunnel, delaying every other flow behind it.
            if let Err(error) = device.set_tx_queue_len(TX_QUEUE_LEN) {
                tracing::debug!(%error, device = %name, "cannot shorten the TUN queue");
            }
        }
        tracing::debug!(device = %name, offload, udp_gso = device.udp_gso(), "TUN device");
        let read_size = usize::from(mtu) + READ_HEADROOM;
        let device = Arc::new(device);
        let interrupt = Arc::new(InterruptEvent::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let free = Arc::new(ArrayQueue::new(READ_AHEAD + 2));
        let (to_loop, inbox) = mpsc::channel(READ_AHEAD);
        let reader = {
            let (device, interrupt, free, stop) = (
                Arc::clone(&device),
                Arc::clone(&interrupt),
                Arc::clone(&free),
                Arc::clone(&stop),
            );
            let name = name.clone();
            std::thread::Builder::new()
                .name(format!("tun-read-{name}"))
                .spawn(move || {
                    read_loop(
                        &device, &interrupt, &to_loop, &free, &stop, read_size, &name,
                    );
                })?
        };
        Ok(Self {
            device,
            name,
            offload,
            inbox,
            free,
            stop,
            interrupt,
            reader: Some(reader),
            pending: PacketBatch::default(),
            pending_next: 0,
            writes: Vec::with_capacity(IDEAL_BATCH_SIZE),
            gro: GROTable::new(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TunDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Fails a reader waiting for room in the channel, and wakes one waiting for packets.
        self.inbox.close();
        if let Err(error) = self.interrupt.trigger() {
            tracing::error!(%error, device = %self.name, "cannot stop the TUN reader");
            return;
        }
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                tracing::error!(device = %self.name, "the TUN reader panicked");
            }
        }
    }
}

/// Reads batches until the device fails or the [`TunDevice`] is dropped; the loop sees the
/// channel close in both cases.
fn read_loop(
    device: &SyncDevice,
    interrupt: &InterruptEvent,
    to_loop: &mpsc::Sender<PacketBatch>,
    free: &ArrayQueue<PacketBatch>,
    stop: &AtomicBool,
    read_size: usize,
    name: &str,
) {
    // The raw read: virtio-net header and the unsplit GSO run.
    let mut raw = vec![0; VIRTIO_NET_HDR_LEN + MAX_OFFLOAD];
    loop {
        let mut batch = free.pop().unwrap_or_default();
        batch.clear();
        batch.reserve(IDEAL_BATCH_SIZE, read_size);
        let n = loop {
            let (buffers, sizes, offset) = batch.parts_mut();
            match device.recv_multiple_intr(&mut raw, buffers, sizes, offset, interrupt) {
                Ok(n) => break n,
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(error) if error.raw_os_error().is_none() => {
                    // A malformed GSO run from the kernel (tun-rs's own check): skip it.
                    tracing::debug!(%error, device = %name, "bad packet from the TUN device");
                }
                Err(error) => {
                    tracing::error!(%error, device = %name, "reading the TUN device failed");
                    return;
                }
            }
        };
        batch.set_len(n);
        // Blocks while the loop is behind; fails once the device is dropped.
        if to_loop.blocking_send(batch).is_err() {
            return;
        }
    }
}

impl Device for TunDevice {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        // The one-packet path (the loop uses `recv_batch`): hands out a batch one by one.
        while self.pending_next >= self.pending.len() {
            let mut batch = std::mem::take(&mut self.pending);
            let open = self.recv_batch(&mut batch).await;
            self.pending = batch;
            self.pending_next = 0;
            if !open {
                return None;
            }
        }
        let packet = self
            .pending
            .packets()
            .nth(self.pending_next)
            .map(<[u8]>::to_vec);
        self.pending_next += 1;
        packet
    }

    async fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let mut one = vec![Buffer::with_headroom(packet, VIRTIO_NET_HDR_LEN)];
        self.send_batch(&mut one).await
    }

    async fn recv_batch(&mut self, batch: &mut PacketBatch) -> bool {
        // Cancel-safe: the channel's `recv` is, and nothing is taken before it returns.
        match self.inbox.recv().await {
            Some(mut read) => {
                std::mem::swap(batch, &mut read);
                read.clear();
                // A full queue means the reader has enough; this one is freed.
                let _ = self.free.push(read);
                true
            }
            None => false,
        }
    }

    async fn send_batch(&mut self, packets: &mut Vec<Buffer>) -> io::Result<()> {
        if !self.offload {
            for packet in packets.drain(..) {
                self.device.send(&packet)?;
            }
            return Ok(());
        }
        while !packets.is_empty() {
            let n = packets.len().min(IDEAL_BATCH_SIZE);
            self.writes.clear();
            for mut packet in packets.drain(..n) {
                if packet.headroom() < VIRTIO_NET_HDR_LEN {
                    // Not a decrypted packet (those keep room): copied, once.
                    packet = Buffer::with_headroom(&packet, VIRTIO_NET_HDR_LEN);
                }
                packet.prepend(VIRTIO_NET_HDR_LEN).fill(0);
                self.writes.push(TunWrite(packet));
            }
            let written =
                self.device
                    .send_multiple(&mut self.gro, &mut self.writes, VIRTIO_NET_HDR_LEN);
            // Back to the pool before anything else.
            self.writes.clear();
            match written {
                Ok(_) => {}
                // tun-rs refusing a packet it cannot coalesce or frame (no OS error): the
                // batch is lost, like packets a kernel drops; the device is fine.
                Err(error) if error.raw_os_error().is_none() => {
                    tracing::debug!(%error, device = %self.name, "packets not written");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// A pool buffer as tun-rs sees one to write: GRO appends the segments of a TCP flow to the
/// first packet of the flow, within the buffer's storage.
struct TunWrite(Buffer);

impl AsRef<[u8]> for TunWrite {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for TunWrite {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl ExpandBuffer for TunWrite {
    fn buf_capacity(&self) -> usize {
        self.0.capacity()
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        self.0.resize(new_len, value);
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        self.0.extend_from_slice(src);
    }
}

/// Runs `ip ARGS`, failing with its standard error when it fails.
fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run `ip` (is iproute2 installed?): {e}"),
        )
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "-4",
        IpAddr::V6(_) => "-6",
    }
}

/// The addresses and routes of a TUN device, changed by difference with what is applied.
#[derive(Debug)]
pub struct TunConfig {
    name: String,
    interface: Option<Interface>,
    routes: BTreeSet<IpNetwork>,
}

impl TunConfig {
    /// The configuration of the device `name`, empty so far.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            interface: None,
            routes: BTreeSet::new(),
        }
    }

    /// Gives the device the tunnel addresses of `interface` (a /32 and a /128), replacing
    /// earlier ones. Failures are logged: the tunnel keeps running, the user sees why.
    pub fn set_interface(&mut self, interface: Interface) {
        if self.interface == Some(interface) {
            return;
        }
        let old = self.interface.replace(interface);
        let new = [IpAddr::V4(interface.ipv4), IpAddr::V6(interface.ipv6)];
        if let Some(old) = old {
            for addr in [IpAddr::V4(old.ipv4), IpAddr::V6(old.ipv6)] {
                if !new.contains(&addr) {
                    self.address("del", addr);
                }
            }
        }
        for addr in new {
            self.address("replace", addr);
        }
        tracing::info!(device = %self.name, ipv4 = %interface.ipv4, ipv6 = %interface.ipv6, "Tunnel addresses set");
    }

    fn address(&self, action: &str, addr: IpAddr) {
        let prefix = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let cidr = format!("{addr}/{prefix}");
        let args = [family(addr), "addr", action, &cidr, "dev", &self.name];
        if let Err(error) = ip(&args) {
            tracing::warn!(%error, "cannot configure a tunnel address");
        }
    }

    /// Routes exactly `routes` into the device.
    pub fn set_routes(&mut self, routes: &BTreeSet<IpNetwork>) {
        for gone in self.routes.difference(routes) {
            self.route("del", gone);
        }
        for new in routes.difference(&self.routes) {
            self.route("replace", new);
        }
        if self.routes != *routes {
            tracing::info!(device = %self.name, routes = ?routes.iter().map(ToString::to_string).collect::<Vec<_>>(), "Routes set");
        }
        self.routes.clone_from(routes);
    }

    fn route(&self, action: &str, network: &IpNetwork) {
        let net = network.to_string();
        let args = [
            family(network.addr()),
            "route",
            action,
            &net,
            "dev",
            &self.name,
        ];
        if let Err(error) = ip(&args) {
            tracing::warn!(%error, "cannot configure a route");
        }
    }
}
