//! A Linux TUN device (through `tun-rs`) as the event loop's [`Device`], and the interface
//! configuration the client and the gateway apply to it (addresses, routes) with iproute2.
//!
//! The device is not persistent: it disappears when the [`TunDevice`] is dropped, and every
//! address and route on it with it. Configuration runs `ip` from iproute2, which must be on
//! `PATH`; it happens a few times per portal session, never per packet.
//!
//! This is the simple version: one packet per `read`/`write`, no virtio-net header, so no
//! TSO/GSO batches from the kernel (`DeviceBuilder::offload`), and one allocation per packet
//! read (the [`Device`] trait hands packets over as `Vec<u8>`).

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::process::Command;

use super::Device;
use crate::portal::{Interface, IpNetwork};

/// Headroom above the MTU for a read buffer (the kernel never hands us more than the MTU, but
/// the MTU may be raised from outside while we run).
const READ_HEADROOM: usize = 256;

/// A TUN device, removed when dropped.
pub struct TunDevice {
    device: tun_rs::AsyncDevice,
    name: String,
    read_size: usize,
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
            .enable(true)
            .build_async()?;
        // The kernel may have picked the name (a pattern such as `tun%d`).
        let name = device.name()?;
        Ok(Self {
            device,
            name,
            read_size: usize::from(mtu) + READ_HEADROOM,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Device for TunDevice {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            // Allocated per packet: the loop takes ownership of what it reads. Cancel-safe: a
            // dropped future has read nothing.
            let mut buf = vec![0u8; self.read_size];
            match self.device.recv(&mut buf).await {
                Ok(n) => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(error) => {
                    tracing::error!(%error, device = %self.name, "reading the TUN device failed");
                    return None;
                }
            }
        }
    }

    async fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        self.device.send(packet).await.map(|_| ())
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
