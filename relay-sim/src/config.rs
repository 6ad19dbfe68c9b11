//! Server configuration, checked once at construction.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::peers::IpNet;

/// What the relay needs to know about itself.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// REALM sent to clients and used in the long-term credential key.
    pub realm: String,
    /// Shared secret of the TURN REST API credentials.
    pub auth_secret: String,
    /// The address advertised in XOR-RELAYED-ADDRESS (IPv4 only).
    pub public_ip: Ipv4Addr,
    /// Ports handed out as relayed transport addresses.
    pub relay_ports: RangeInclusive<u16>,
    /// The port clients send requests to; must lie outside `relay_ports`.
    pub listen_port: u16,
    /// Allocations held at once before answering 508.
    pub max_allocations: usize,
    /// Lifetime of an allocation when the client does not ask for one.
    pub default_lifetime: Duration,
    /// Longest lifetime granted.
    pub max_lifetime: Duration,
    /// Lifetime of a permission (RFC 8656: 300 s).
    pub permission_lifetime: Duration,
    /// Lifetime of a channel binding (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// How long a NONCE stays valid before the client gets 438.
    pub nonce_lifetime: Duration,
    /// How long a port reserved by EVEN-PORT (R bit) is held for its RESERVATION-TOKEN.
    pub reservation_lifetime: Duration,
    /// Peer networks served even though they are refused by default (loopback, private,
    /// link-local, ..., the relay's own address: see [`crate::DeniedRange`]). Empty by default;
    /// for labs and tests whose peers have such addresses.
    pub allow_peers: Vec<IpNet>,
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The relay port range holds no port.
    #[error("relay port range {0}-{1} is empty")]
    EmptyPortRange(u16, u16),
    /// The listening port is one of the relay ports.
    #[error("listening port {0} is inside the relay port range")]
    ListenPortInRelayRange(u16),
    /// No secret to check credentials with.
    #[error("the auth secret is empty")]
    EmptySecret,
    /// REALM must not be empty (it is part of the credential key) and at most 763 bytes.
    #[error("the realm must be 1 to 763 bytes")]
    InvalidRealm,
    /// An unspecified or non-unicast public address cannot be advertised.
    #[error("public IP {0} cannot be advertised to clients")]
    InvalidPublicIp(Ipv4Addr),
    /// Lifetimes must be non-zero and the default at most the maximum.
    #[error("lifetimes must be non-zero, default <= max")]
    InvalidLifetimes,
}

impl Config {
    /// A configuration with the RFC's lifetimes, relay ports 49152-65535 and listen port 3478.
    pub fn new(
        realm: impl Into<String>,
        auth_secret: impl Into<String>,
        public_ip: Ipv4Addr,
    ) -> Self {
        Self {
            realm: realm.into(),
            auth_secret: auth_secret.into(),
            public_ip,
            relay_ports: 49152..=65535,
            listen_port: 3478,
            max_allocations: 100_000,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            reservation_lifetime: Duration::from_secs(30),
            allow_peers: Vec::new(),
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (lo, hi) = (*self.relay_ports.start(), *self.relay_ports.end());
        if lo > hi {
            return Err(ConfigError::EmptyPortRange(lo, hi));
        }
        if self.relay_ports.contains(&self.listen_port) {
            return Err(ConfigError::ListenPortInRelayRange(self.listen_port));
        }
        if self.auth_secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        if self.realm.is_empty() || self.realm.len() > 763 {
            return Err(ConfigError::InvalidRealm);
        }
        let ip = self.public_ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(ConfigError::InvalidPublicIp(ip));
        }
        let lifetimes = [
            self.default_lifetime,
            self.max_lifetime,
            self.permission_lifetime,
            self.channel_lifetime,
            self.nonce_lifetime,
            self.reservation_lifetime,
        ];
        if lifetimes.iter().any(Duration::is_zero) || self.default_lifetime > self.max_lifetime {
            return Err(ConfigError::InvalidLifetimes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = Config::new("r", "s", Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.listen_port = 50000;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ListenPortInRelayRange(50000))
        );
        let mut c = ok.clone();
        c.relay_ports = RangeInclusive::new(10, 9);
        assert_eq!(c.validate(), Err(ConfigError::EmptyPortRange(10, 9)));
        let mut c = ok.clone();
        c.auth_secret.clear();
        assert_eq!(c.validate(), Err(ConfigError::EmptySecret));
        let mut c = ok.clone();
        c.public_ip = Ipv4Addr::UNSPECIFIED;
        assert!(matches!(c.validate(), Err(ConfigError::InvalidPublicIp(_))));
        let mut c = ok;
        c.default_lifetime = c.max_lifetime * 2;
        assert_eq!(c.validate(), Err(ConfigError::InvalidLifetimes));
    }
}
