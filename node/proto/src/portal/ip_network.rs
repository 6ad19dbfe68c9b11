//! A resource's address: a CIDR range, or a single host written without a prefix.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetworkError {
    /// The part before the `/` is not an IP address.
    #[error("`{0}` is not an IP address")]
    InvalidAddress(String),
    /// The prefix is not a number or too long for the address family.
    #[error("invalid prefix length `{0}`")]
    InvalidPrefix(String),
    /// Bits below the prefix are set; rather than guessing whether the host or the range was
    /// meant, the address is refused.
    #[error("{addr}/{prefix} has host bits set")]
    HostBitsSet {
        /// The address as given.
        addr: IpAddr,
        /// The prefix as given.
        prefix: u8,
    },
}

/// An IPv4 or IPv6 network, e.g. `10.0.0.0/24`; a single host is a /32 or /128.
///
/// Serialised as `addr/prefix`; parsing also accepts a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

/// The range the portal assigns clients' IPv4 tunnel addresses from (RFC 6598 shared address
/// space); gateways route it back into the tunnel. No resource may overlap it.
pub const CLIENT_TUNNEL_IPV4: IpNetwork = IpNetwork {
    addr: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)),
    prefix: 10,
};

/// The range of clients' IPv6 tunnel addresses, see [`CLIENT_TUNNEL_IPV4`].
pub const CLIENT_TUNNEL_IPV6: IpNetwork = IpNetwork {
    addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x2021, 0x1111, 0, 0, 0, 0, 0)),
    prefix: 48,
};

const fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The mask of host bits for a prefix, within an address of `width` bits.
fn host_mask(width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width - prefix);

    1u128.checked_shl(host_bits).map_or(u128::MAX, |v| v - 1)
}

impl IpNetwork {
    /// A network from its base address and prefix length.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetworkError> {
        let width = max_prefix(addr);
        if prefix > width {
            return Err(IpNetworkError::InvalidPrefix(prefix.to_string()));
        }
        if bits(addr) & host_mask(width, prefix) != 0 {
            return Err(IpNetworkError::HostBitsSet { addr, prefix });
        }

        Ok(Self { addr, prefix })
    }

    /// A single host.
    pub const fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// The base address.
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let mask = !host_mask(max_prefix(ip), self.prefix);

        bits(ip) & mask == bits(self.addr)
    }

    /// Whether the two networks share an address: one contains the other's base address
    /// (networks are aligned, so they nest or are disjoint).
    pub fn overlaps(&self, other: &Self) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl FromStr for IpNetwork {
    type Err = IpNetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetworkError::InvalidAddress(addr.to_owned()))?;

        match prefix {
            None => Ok(Self::host(addr)),
            Some(prefix) => {
                let prefix = prefix
                    .parse()
                    .map_err(|_| IpNetworkError::InvalidPrefix(prefix.to_owned()))?;

                Self::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNetwork {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNetwork {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;

        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_hosts() {
        let net: IpNetwork = "10.0.0.0/24".parse().unwrap();
        assert_eq!(net.prefix(), 24);
        assert!(net.contains("10.0.0.200".parse().unwrap()));
        assert!(!net.contains("10.0.1.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));

        let host: IpNetwork = "fd00::5".parse().unwrap();
        assert_eq!(host.to_string(), "fd00::5/128");
        assert!(host.contains("fd00::5".parse().unwrap()));

        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn overlaps_when_nested_either_way() {
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(net("100.64.0.0/10").overlaps(&net("100.64.0.1")));
        assert!(net("100.127.255.255").overlaps(&CLIENT_TUNNEL_IPV4));
        assert!(net("100.0.0.0/8").overlaps(&CLIENT_TUNNEL_IPV4));
        assert!(net("0.0.0.0/0").overlaps(&CLIENT_TUNNEL_IPV4));
        assert!(net("fd00:2021:1111:5::/64").overlaps(&CLIENT_TUNNEL_IPV6));
        assert!(net("fd00::/8").overlaps(&CLIENT_TUNNEL_IPV6));
        assert!(!net("100.128.0.0/10").overlaps(&CLIENT_TUNNEL_IPV4));
        assert!(!net("100.63.255.255").overlaps(&CLIENT_TUNNEL_IPV4));
        assert!(!net("fd00:2021:1112::/48").overlaps(&CLIENT_TUNNEL_IPV6));
        assert!(!net("::/0").overlaps(&CLIENT_TUNNEL_IPV4), "other family");
        assert_eq!(CLIENT_TUNNEL_IPV4, net("100.64.0.0/10"));
        assert_eq!(CLIENT_TUNNEL_IPV6, net("fd00:2021:1111::/48"));
    }

    #[test]
    fn rejects_invalid() {
        assert!(matches!(
            "10.0.0.1/24".parse::<IpNetwork>(),
            Err(IpNetworkError::HostBitsSet { .. })
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<IpNetwork>(),
            Err(IpNetworkError::InvalidPrefix(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<IpNetwork>(),
            Err(IpNetworkError::InvalidPrefix(_))
        ));
        assert!(matches!(
            "example.com".parse::<IpNetwork>(),
            Err(IpNetworkError::InvalidAddress(_))
        ));
    }
}
