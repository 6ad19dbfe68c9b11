//! Which peer addresses the relay sends to (RFC 8656 sections 9.2 and 12.2: 403 Forbidden).
//!
//! A relay sits on a public address but usually inside someone's network: left open, any client
//! with credentials could use it to reach the relay host's loopback services, the private network
//! behind it, or the relay's own listening port. So, like coturn's `no-loopback-peers` and
//! `denied-peer-ip`, peers in the ranges of [`DeniedRange`] are refused unless an allow-list
//! ([`crate::Config::allow_peers`]) lifts them, for labs and tests whose peers live there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network in CIDR notation, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is a network
/// of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetError {
    /// The part before `/` is not an IP address.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("{0:?} is not a prefix length for this address family")]
    Prefix(String),
    /// Bits are set after the prefix (`10.1.0.0/8`): probably a typo, so refused.
    #[error("{0} has bits set after its /{1} prefix")]
    HostBits(IpAddr, u8),
}

impl IpNet {
    /// The network `addr/prefix`; `addr` must have no bits set after the prefix.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        let net = Self { addr, prefix };
        if prefix > max_prefix(addr) {
            return Err(IpNetError::Prefix(prefix.to_string()));
        }
        if net.network_bits(addr) != bits(addr) {
            return Err(IpNetError::HostBits(addr, prefix));
        }
        Ok(net)
    }

    /// Whether `ip` is inside the network. An IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.network_bits(ip) == bits(self.addr)
    }

    fn network_bits(&self, ip: IpAddr) -> u128 {
        let width = u32::from(max_prefix(ip));
        let host = width - u32::from(self.prefix);
        bits(ip)
            .checked_shr(host)
            .and_then(|b| b.checked_shl(host))
            .unwrap_or(0)
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError::Address(addr.to_owned()))?;
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| IpNetError::Prefix(p.to_owned()))?
            }
            Some(p) => return Err(IpNetError::Prefix(p.to_owned())),
            None => max_prefix(addr),
        };
        Self::new(addr, prefix)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The ranges a peer is refused in unless allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeniedRange {
    /// `0.0.0.0/8` ("this network": Linux delivers `0.0.0.0` to the host itself) and `::`.
    Unspecified,
    /// `127.0.0.0/8` and `::1`: services on the relay host.
    Loopback,
    /// RFC 1918 (`10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`) and RFC 4193 (`fc00::/7`).
    Private,
    /// `169.254.0.0/16` (cloud metadata services live there) and `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// The relay's own public address, except its relay ports (relaying between two allocations
    /// of this relay never leaves it).
    Relay,
}

impl DeniedRange {
    /// The range a peer IP falls in, if it is refused by default. The relay's own address is
    /// not known here (see [`DeniedRange::Relay`]).
    pub fn of(ip: IpAddr) -> Option<Self> {
        match ip.to_canonical() {
            IpAddr::V4(ip) => Self::of_v4(ip),
            IpAddr::V6(ip) => Self::of_v6(ip),
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Option<Self> {
        if ip.octets()[0] == 0 {
            Some(Self::Unspecified)
        } else if ip.is_loopback() {
            Some(Self::Loopback)
        } else if ip.is_private() {
            Some(Self::Private)
        } else if ip.is_link_local() {
            Some(Self::LinkLocal)
        } else if ip.is_multicast() {
            Some(Self::Multicast)
        } else if ip.is_broadcast() {
            Some(Self::Broadcast)
        } else {
            None
        }
    }

    fn of_v6(ip: Ipv6Addr) -> Option<Self> {
        if ip.is_unspecified() {
            Some(Self::Unspecified)
        } else if ip.is_loopback() {
            Some(Self::Loopback)
        } else if ip.is_unique_local() {
            Some(Self::Private)
        } else if ip.is_unicast_link_local() {
            Some(Self::LinkLocal)
        } else if ip.is_multicast() {
            Some(Self::Multicast)
        } else {
            None
        }
    }

    /// A short description, for the error response's reason and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "peer address is unspecified",
            Self::Loopback => "peer address is loopback",
            Self::Private => "peer address is private",
            Self::LinkLocal => "peer address is link-local",
            Self::Multicast => "peer address is multicast",
            Self::Broadcast => "peer address is broadcast",
            Self::Relay => "peer address is the relay's own",
        }
    }
}

impl fmt::Display for DeniedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches_networks() {
        let net: IpNet = "172.16.0.0/12".parse().unwrap();
        assert_eq!(net.to_string(), "172.16.0.0/12");
        assert!(net.contains(ip("172.31.255.255")));
        assert!(!net.contains(ip("172.32.0.0")));
        assert!(net.contains(ip("::ffff:172.16.0.1")));
        assert!(!net.contains(ip("fd00::1")));
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        let v6: IpNet = "fc00::/7".parse().unwrap();
        assert!(v6.contains(ip("fdff::1")) && !v6.contains(ip("fe00::1")));
        assert_eq!(
            "10.1.0.0/8".parse::<IpNet>(),
            Err(IpNetError::HostBits(ip("10.1.0.0"), 8))
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<IpNet>(),
            Err(IpNetError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<IpNet>(),
            Err(IpNetError::Prefix(_))
        ));
        assert!(matches!(
            "ten/8".parse::<IpNet>(),
            Err(IpNetError::Address(_))
        ));
    }

    #[test]
    fn default_denials() {
        let cases = [
            ("0.0.0.0", Some(DeniedRange::Unspecified)),
            ("0.1.2.3", Some(DeniedRange::Unspecified)),
            ("127.0.0.53", Some(DeniedRange::Loopback)),
            ("10.9.8.7", Some(DeniedRange::Private)),
            ("172.16.0.1", Some(DeniedRange::Private)),
            ("172.31.255.254", Some(DeniedRange::Private)),
            ("192.168.1.1", Some(DeniedRange::Private)),
            ("169.254.169.254", Some(DeniedRange::LinkLocal)),
            ("224.0.0.1", Some(DeniedRange::Multicast)),
            ("239.255.255.250", Some(DeniedRange::Multicast)),
            ("255.255.255.255", Some(DeniedRange::Broadcast)),
            ("::", Some(DeniedRange::Unspecified)),
            ("::1", Some(DeniedRange::Loopback)),
            ("fd12::1", Some(DeniedRange::Private)),
            ("fe80::1", Some(DeniedRange::LinkLocal)),
            ("ff02::1", Some(DeniedRange::Multicast)),
            ("::ffff:10.0.0.1", Some(DeniedRange::Private)),
            ("172.32.0.1", None),
            ("192.0.2.1", None),
            ("198.51.100.1", None),
            ("2001:db8::1", None),
        ];
        for (addr, expected) in cases {
            assert_eq!(DeniedRange::of(ip(addr)), expected, "{addr}");
        }
    }
}
