//! Which peer addresses the relay sends to (RFC 8656 sections 9.2 and 12.2: 403 Forbidden).
//!
//! A relay sits on a public address but usually inside someone's network: left open, any client
//! with credentials could use it to reach the relay host's loopback services, the private network
//! behind it, or the relay's own listening port. So, like coturn's `no-loopback-peers` and
//! `denied-peer-ip`, peers in the ranges of [`DeniedRange`] are refused unless an allow-list
//! ([`crate::Config::allow_peers`]) lifts them, for labs and tests whose peers live there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;

/// Why a string is not a network to allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetError {
    /// Neither an IP address nor CIDR notation.
    #[error("{0:?} is neither an IP address nor a network in CIDR notation")]
    Syntax(String),
    /// Bits are set after the prefix (`10.1.0.0/8`): probably a typo, so refused.
    #[error("{0} has bits set after its prefix")]
    HostBits(IpNet),
}

/// A network to allow peers in: CIDR notation (`10.0.0.0/8`, `fd00::/8`), or a bare address
/// (a network of one). Bits after the prefix are refused rather than cut off.
pub fn parse_network(s: &str) -> Result<IpNet, IpNetError> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| IpNetError::Syntax(s.to_owned()))?,
    };
    if net.trunc() != net {
        return Err(IpNetError::HostBits(net));
    }
    Ok(net)
}

/// Whether `ip` is in `net`; an IPv4-mapped IPv6 address counts as its IPv4 one.
pub(crate) fn contains(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip.to_canonical())
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
        let net = parse_network("172.16.0.0/12").unwrap();
        assert_eq!(net.to_string(), "172.16.0.0/12");
        assert!(contains(&net, ip("172.31.255.255")));
        assert!(!contains(&net, ip("172.32.0.0")));
        assert!(contains(&net, ip("::ffff:172.16.0.1")));
        assert!(!contains(&net, ip("fd00::1")));
        let one = parse_network("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(contains(&one, ip("192.0.2.7")) && !contains(&one, ip("192.0.2.8")));
        let all = parse_network("0.0.0.0/0").unwrap();
        assert!(contains(&all, ip("255.255.255.255")));
        let v6 = parse_network("fc00::/7").unwrap();
        assert!(contains(&v6, ip("fdff::1")) && !contains(&v6, ip("fe00::1")));
        assert!(matches!(
            parse_network("10.1.0.0/8"),
            Err(IpNetError::HostBits(_))
        ));
        for bad in ["10.0.0.0/33", "10.0.0.0/+8", "ten/8", ""] {
            assert!(
                matches!(parse_network(bad), Err(IpNetError::Syntax(_))),
                "{bad}"
            );
        }
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
