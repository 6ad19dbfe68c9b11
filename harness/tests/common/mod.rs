//! Helpers shared by the in-memory network tests.

// Each test binary uses its own subset of these.
#![allow(dead_code, clippy::unwrap_used, clippy::wildcard_enum_match_arm)]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use harness::memnet::{HostId, MemNet, PeerRef};
use node_core::datagram::DatagramKind;
use node_core::packet::IpPacket;
use node_core::{Event, FailReason};

pub(crate) fn addr(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

/// UDP payloads `host` received through its tunnel, attributed to `from`.
pub(crate) fn payloads(net: &MemNet, host: HostId, from: HostId) -> Vec<Vec<u8>> {
    net.host(host)
        .received
        .iter()
        .filter(|r| r.from == from)
        .map(|r| {
            let p = IpPacket::parse(r.packet.clone()).unwrap();
            p.as_bytes()[28..].to_vec()
        })
        .collect()
}

pub(crate) fn all_payloads(net: &MemNet, host: HostId) -> Vec<Vec<u8>> {
    net.host(host)
        .received
        .iter()
        .map(|r| r.packet[28..].to_vec())
        .collect()
}

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub(crate) fn events_of(net: &MemNet, host: HostId) -> Vec<(Duration, Event<PeerRef>)> {
    net.events()
        .iter()
        .filter(|(_, h, _)| *h == host)
        .map(|(t, _, e)| (*t, e.clone()))
        .collect()
}

pub(crate) fn established_at(net: &MemNet, host: HostId) -> Vec<Duration> {
    events_of(net, host)
        .into_iter()
        .filter_map(|(t, e)| matches!(e, Event::ConnectionEstablished(_)).then_some(t))
        .collect()
}

pub(crate) fn failures(net: &MemNet, host: HostId) -> Vec<(Duration, FailReason)> {
    events_of(net, host)
        .into_iter()
        .filter_map(|(t, e)| match e {
            Event::ConnectionFailed { reason, .. } => Some((t, reason)),
            _ => None,
        })
        .collect()
}

pub(crate) const BINDING_REQUEST: u16 = 0x0001;

/// Records when datagrams of a kind (and, for STUN, binding requests only) leave a host.
pub(crate) fn record_sends(
    net: &mut MemNet,
    from: HostId,
    kind: DatagramKind,
) -> Rc<RefCell<Vec<Duration>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let start = net.now() - net.elapsed();
    let log = Rc::clone(&seen);
    net.set_filter(move |p| {
        let request = p.stun_type.is_none_or(|t| t == BINDING_REQUEST);
        if p.from == from && p.kind == kind && request {
            log.borrow_mut().push(p.at - start);
        }
        false
    });
    seen
}
