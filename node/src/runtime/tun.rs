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

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::process::Command;

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::{Device, PacketBatch};
use node_core::pool::Buffer;
use node_core::portal::{Interface, IpNetwork};

/// Headroom above the MTU for a read buffer (the kernel never hands us more than the MTU, but
/// the MTU may be raised from outside while we run).
const READ_HEADROOM: usize = 256;

/// Largest packet the kernel hands over in one read with offload (a GSO run), and so the
/// largest a coalesced write may grow to.
const MAX_OFFLOAD: usize = 65_535;

/// Entries of the TUN device's transmit queue with offload on (see [`TunDevice::create`]).
const TX_QUEUE_LEN: u32 = 64;

/// A TUN device, removed when dropped.
pub struct TunDevice {
    device: tun_rs::AsyncDevice,
    name: String,
    read_size: usize,
    /// Whether the kernel accepted offload (packets carry a virtio-net header).
    offload: bool,
    /// The raw read: virtio-net header and the unsplit GSO run.
    raw: Vec<u8>,
    /// Packets read but not yet handed out by [`Device::recv`] (the one-packet path).
    pending: PacketBatch,
    pending_next: usize,
    /// Packets to write, each after `VIRTIO_NET_HDR_LEN` bytes of room for its header, with
    /// capacity for a coalesced run; reused from write to write.
    writes: Vec<Vec<u8>>,
    gro: GROTable,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("read_size", &self.read_size)
            .finish_non_exhaustive()
    }
}

impl TunDevice {
    /// Creates the TUN device `name` with `mtu`, and brings it up. Needs `CAP_NET_ADMIN`. Must be
    /// called inside a tokio runtime (the device registers with its reactor).
    pub fn create(name: &str, mtu: u16) -> io::Result<Self> {
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(true)
            .enable(true)
            .build_async()?;
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
        Ok(Self {
            device,
            name,
            read_size,
            offload,
            raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_OFFLOAD],
            pending: PacketBatch::new(IDEAL_BATCH_SIZE, read_size, 0),
            pending_next: 0,
            writes: Vec::new(),
            gro: GROTable::new(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
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
        self.write_all(std::iter::once(packet)).await
    }

    async fn recv_batch(&mut self, batch: &mut PacketBatch) -> bool {
        batch.clear();
        batch.reserve(IDEAL_BATCH_SIZE, self.read_size);
        loop {
            let (buffers, sizes, offset) = batch.parts_mut();
            // Cancel-safe: a dropped future has read nothing.
            match self
                .device
                .recv_multiple(&mut self.raw, buffers, sizes, offset)
                .await
            {
                Ok(n) => {
                    batch.set_len(n);
                    return true;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(error) if error.raw_os_error().is_none() => {
                    // A malformed GSO run from the kernel (tun-rs's own check): skip it.
                    tracing::debug!(%error, device = %self.name, "bad packet from the TUN device");
                }
                Err(error) => {
                    tracing::error!(%error, device = %self.name, "reading the TUN device failed");
                    return false;
                }
            }
        }
    }

    async fn send_batch(&mut self, packets: &[Buffer]) -> io::Result<()> {
        self.write_all(packets.iter().map(|p| &p[..])).await
    }
}

impl TunDevice {
    /// Writes `packets` in batches of [`IDEAL_BATCH_SIZE`], each coalesced per TCP flow when
    /// offload is on.
    async fn write_all<'a>(&mut self, packets: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut packets = packets.peekable();
        while packets.peek().is_some() {
            let mut n = 0;
            for packet in packets.by_ref().take(IDEAL_BATCH_SIZE) {
                if self.writes.len() == n {
                    // Room for the header and a coalesced run, so GRO never reallocates.
                    self.writes
                        .push(Vec::with_capacity(VIRTIO_NET_HDR_LEN + MAX_OFFLOAD));
                }
                let buffer = &mut self.writes[n];
                buffer.clear();
                buffer.resize(VIRTIO_NET_HDR_LEN, 0);
                buffer.extend_from_slice(packet);
                n += 1;
            }
            if self.offload {
                let written = self
                    .device
                    .send_multiple(&mut self.gro, &mut self.writes[..n], VIRTIO_NET_HDR_LEN)
                    .await;
                match written {
                    Ok(_) => {}
                    // tun-rs refusing a packet it cannot coalesce or frame (no OS error): the
                    // batch is lost, like packets a kernel drops; the device is fine.
                    Err(error) if error.raw_os_error().is_none() => {
                        tracing::debug!(%error, device = %self.name, "packets not written");
                    }
                    Err(error) => return Err(error),
                }
            } else {
                for buffer in &self.writes[..n] {
                    self.device.send(&buffer[VIRTIO_NET_HDR_LEN..]).await?;
                }
            }
        }
        Ok(())
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
