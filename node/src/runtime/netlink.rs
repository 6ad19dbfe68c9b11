//! Hears from the kernel (rtnetlink) when the host's addresses, routes or links change, so a
//! node can follow the address it is reached on (see [`super::host`]).

use std::io;

use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket as _, AsyncSocketExt as _, SocketAddr};

/// The rtnetlink multicast groups listened to (`linux/rtnetlink.h`): links, and the addresses
/// and routes of both families. Any of them can change the address that routes to the portal.
const GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// Room for one read; a longer message is cut short, which is fine: nothing is parsed.
const READ_SIZE: usize = 16 * 1024;

/// A netlink socket subscribed to the host's network changes.
pub(super) struct NetworkWatcher {
    socket: netlink_sys::TokioSocket,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NetworkWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkWatcher").finish_non_exhaustive()
    }
}

impl NetworkWatcher {
    /// Subscribes to the changes (no privilege needed).
    pub(super) fn new() -> io::Result<Self> {
        let mut socket = netlink_sys::TokioSocket::new(NETLINK_ROUTE)?;
        socket.socket_mut().bind(&SocketAddr::new(0, GROUPS))?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(READ_SIZE),
        })
    }

    /// Waits until something changed, then takes every message already queued: a burst of
    /// them (an address and the routes that come with it) is one change to look at.
    ///
    /// What changed is not parsed: the caller asks the kernel afresh which address routes
    /// where, which is the one answer that counts, whatever the messages said. An overflow
    /// of the socket's queue (`ENOBUFS`, messages lost) is a change too, for the same reason.
    pub(super) async fn changed(&mut self) -> io::Result<()> {
        self.buf.clear();
        match self.socket.recv(&mut self.buf).await {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(ENOBUFS) => {}
            Err(error) => return Err(error),
        }
        loop {
            self.buf.clear();
            match self.socket.socket_ref().recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(ENOBUFS) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    }
}

/// `ENOBUFS` on Linux: the socket's receive queue overflowed.
const ENOBUFS: i32 = 105;
