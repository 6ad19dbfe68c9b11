//! The portal's configuration: who exists, what they may reach, where the relays are.
//!
//! ```json
//! {
//!   "clients":   [{"id": 1, "name": "alice", "token": "tok-c1", "ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1"}],
//!   "gateways":  [{"id": 1, "name": "hq-1", "token": "tok-g1", "site": "hq"}],
//!   "resources": [{"id": 1, "name": "db", "site": "hq", "type": "host", "address": "10.0.0.5"}],
//!   "policies":  [{"client_id": 1, "resource_id": 1, "duration_secs": 3600}],
//!   "relays":    [{"id": 1, "address": "203.0.113.9:3478"}]
//! }
//! ```
//!
//! Public keys are not configured: nodes send theirs when they join.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use node_proto::ids::{ClientId, GatewayId, RelayId, ResourceId};
use node_proto::portal::{
    IpNetwork, ResourceAddress, ResourceDescription, CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6,
};
use serde::{Deserialize, Serialize};

/// Why a seed file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid seed file.
    #[error("invalid seed file")]
    Json(#[from] serde_json::Error),
    /// Two entries share an id or token, or a policy names something that does not exist.
    #[error("inconsistent seed file: {0}")]
    Inconsistent(String),
    /// A resource the portal would refuse at runtime too.
    #[error(transparent)]
    Resource(#[from] ResourceError),
}

/// Why a resource was refused, in the seed file or when added at runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The resource overlaps a client tunnel range ([`node_proto::portal::CLIENT_TUNNEL_IPV4`],
    /// [`node_proto::portal::CLIENT_TUNNEL_IPV6`]): its addresses could be clients' own, and a gateway routes that
    /// range back into the tunnel.
    #[error("resource {id} ({name:?}) at {address} overlaps the client tunnel range {range}")]
    OverlapsClientTunnel {
        /// The resource.
        id: ResourceId,
        /// Its name.
        name: String,
        /// What it covers.
        address: IpNetwork,
        /// The tunnel range it overlaps.
        range: IpNetwork,
    },
}

/// A user's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSeed {
    /// Its id.
    pub id: ClientId,
    /// For operators.
    #[serde(default)]
    pub name: String,
    /// The secret in its WebSocket URL.
    pub token: String,
    /// Its IPv4 tunnel address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 tunnel address.
    pub ipv6: Ipv6Addr,
}

/// A gateway; gateways of one site are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySeed {
    /// Its id.
    pub id: GatewayId,
    /// For operators.
    #[serde(default)]
    pub name: String,
    /// The secret in its WebSocket URL.
    pub token: String,
    /// The site it serves.
    pub site: String,
}

/// A resource, reachable through the gateways of its site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSeed {
    /// Its id.
    pub id: ResourceId,
    /// A human-readable name.
    pub name: String,
    /// The site whose gateways reach it.
    pub site: String,
    /// What it covers: `"type": "host"` or `"cidr"`, and `"address"`.
    #[serde(flatten)]
    pub address: ResourceAddress,
}

impl ResourceSeed {
    /// Checks that the portal may serve the resource: it does not overlap a client tunnel
    /// range.
    pub fn validate(&self) -> Result<(), ResourceError> {
        match self.address.client_tunnel_overlap() {
            None => Ok(()),
            Some(range) => Err(ResourceError::OverlapsClientTunnel {
                id: self.id,
                name: self.name.clone(),
                address: self.address.network(),
                range,
            }),
        }
    }

    /// The resource as nodes see it.
    pub fn description(&self) -> ResourceDescription {
        ResourceDescription {
            id: self.id,
            name: self.name.clone(),
            address: self.address,
        }
    }
}

/// A client may reach a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySeed {
    /// Who.
    pub client_id: ClientId,
    /// What.
    pub resource_id: ResourceId,
    /// How long one authorization lasts; the portal's default if absent.
    #[serde(default)]
    pub duration_secs: Option<u64>,
}

/// A TURN relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySeed {
    /// Its id.
    pub id: RelayId,
    /// Where it listens.
    pub address: SocketAddr,
}

/// The whole seed file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    /// Clients.
    #[serde(default)]
    pub clients: Vec<ClientSeed>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<GatewaySeed>,
    /// Resources.
    #[serde(default)]
    pub resources: Vec<ResourceSeed>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<PolicySeed>,
    /// Relays.
    #[serde(default)]
    pub relays: Vec<RelaySeed>,
}

impl SeedFile {
    /// Reads and validates a seed file.
    pub fn load(path: &Path) -> Result<Self, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates a seed file.
    pub fn parse(text: &str) -> Result<Self, SeedError> {
        let seed: Self = serde_json::from_str(text)?;
        seed.validate()?;
        Ok(seed)
    }

    /// Checks that ids and tokens are unique, that resources stay out of the client tunnel
    /// ranges ([`ResourceSeed::validate`]) and that policies name existing entries.
    pub fn validate(&self) -> Result<(), SeedError> {
        fn unique<T: Ord + std::fmt::Display>(
            what: &str,
            items: impl IntoIterator<Item = T>,
        ) -> Result<(), SeedError> {
            let mut seen = BTreeSet::new();
            for item in items {
                if !seen.insert(item.to_string()) {
                    return Err(SeedError::Inconsistent(format!("duplicate {what} {item}")));
                }
            }
            Ok(())
        }
        unique("client id", self.clients.iter().map(|c| c.id))?;
        unique("gateway id", self.gateways.iter().map(|g| g.id))?;
        unique("resource id", self.resources.iter().map(|r| r.id))?;
        unique("relay id", self.relays.iter().map(|r| r.id))?;
        unique("client ipv4", self.clients.iter().map(|c| c.ipv4))?;
        unique("client ipv6", self.clients.iter().map(|c| c.ipv6))?;
        let tokens = self
            .clients
            .iter()
            .map(|c| &c.token)
            .chain(self.gateways.iter().map(|g| &g.token));
        let mut seen = BTreeSet::new();
        for token in tokens {
            if token.is_empty() {
                return Err(SeedError::Inconsistent("empty token".into()));
            }
            if !seen.insert(token) {
                // The token itself is a secret: do not print it.
                return Err(SeedError::Inconsistent("duplicate token".into()));
            }
        }
        // The gateways route only the client tunnel ranges into the tunnel: a client
        // addressed elsewhere would never get an answer.
        for c in &self.clients {
            let (v4, v6) = (IpAddr::V4(c.ipv4), IpAddr::V6(c.ipv6));
            for (ip, range) in [(v4, CLIENT_TUNNEL_IPV4), (v6, CLIENT_TUNNEL_IPV6)] {
                if !range.contains(ip) {
                    return Err(SeedError::Inconsistent(format!(
                        "client {} ({:?}): tunnel address {ip} is outside the client range {range}",
                        c.id, c.name
                    )));
                }
            }
        }
        for resource in &self.resources {
            resource.validate()?;
        }
        for p in &self.policies {
            if !self.clients.iter().any(|c| c.id == p.client_id) {
                return Err(SeedError::Inconsistent(format!(
                    "policy for unknown client {}",
                    p.client_id
                )));
            }
            if !self.resources.iter().any(|r| r.id == p.resource_id) {
                return Err(SeedError::Inconsistent(format!(
                    "policy for unknown resource {}",
                    p.resource_id
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/seed.json");

    #[test]
    fn the_example_seed_file_is_valid() {
        let seed = SeedFile::parse(EXAMPLE).unwrap();
        assert!(!seed.clients.is_empty());
        assert!(!seed.gateways.is_empty());
        assert!(seed
            .resources
            .iter()
            .any(|r| matches!(r.address, ResourceAddress::Cidr { .. })));
    }

    #[test]
    fn bad_seed_files_are_refused() {
        for (text, what) in [
            ("{", "truncated"),
            (r#"{"clients": [{"id": 1}]}"#, "missing fields"),
            (r#"{"clinets": []}"#, "typo"),
            (
                r#"{"gateways": [{"id": 1, "token": "a", "site": "x"}, {"id": 1, "token": "b", "site": "x"}]}"#,
                "duplicate id",
            ),
            (
                r#"{"gateways": [{"id": 1, "token": "a", "site": "x"}, {"id": 2, "token": "a", "site": "x"}]}"#,
                "duplicate token",
            ),
            (
                r#"{"policies": [{"client_id": 1, "resource_id": 1}]}"#,
                "dangling policy",
            ),
        ] {
            assert!(SeedFile::parse(text).is_err(), "{what}");
        }
    }

    #[test]
    fn clients_outside_the_client_tunnel_ranges_are_refused() {
        for (ipv4, ipv6) in [("10.0.0.1", "fd00:2021:1111::1"), ("100.64.0.1", "fd00::1")] {
            let text = format!(
                r#"{{"clients": [{{"id": 1, "name": "far", "token": "t", "ipv4": "{ipv4}", "ipv6": "{ipv6}"}}]}}"#
            );
            let error = SeedFile::parse(&text).unwrap_err().to_string();
            assert!(error.contains("outside the client range"), "{error}");
        }
        let inside = r#"{"clients": [{"id": 1, "token": "t", "ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1"}]}"#;
        assert!(SeedFile::parse(inside).is_ok());
    }

    #[test]
    fn resources_in_the_client_tunnel_ranges_are_refused_by_name() {
        for (address, range) in [
            (
                r#""type": "host", "address": "100.64.0.9""#,
                "100.64.0.0/10",
            ),
            (
                r#""type": "cidr", "address": "100.0.0.0/8""#,
                "100.64.0.0/10",
            ),
            (
                r#""type": "cidr", "address": "100.100.0.0/16""#,
                "100.64.0.0/10",
            ),
            (
                r#""type": "host", "address": "fd00:2021:1111::9""#,
                "fd00:2021:1111::/48",
            ),
            (
                r#""type": "cidr", "address": "fd00::/8""#,
                "fd00:2021:1111::/48",
            ),
        ] {
            let text = format!(
                r#"{{"resources": [{{"id": 4, "name": "clash", "site": "hq", {address}}}]}}"#
            );
            let error = SeedFile::parse(&text).unwrap_err();
            assert!(
                matches!(
                    &error,
                    SeedError::Resource(ResourceError::OverlapsClientTunnel { id, name, .. })
                        if *id == ResourceId(4) && name == "clash"
                ),
                "{address}: {error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains("r4") && message.contains("\"clash\""),
                "{message}"
            );
            assert!(message.contains(range), "{message}");
        }
        for neighbour in [
            r#""type": "cidr", "address": "100.128.0.0/16""#,
            r#""type": "host", "address": "100.63.255.255""#,
            r#""type": "cidr", "address": "fd00:2021:1112::/48""#,
        ] {
            let text = format!(
                r#"{{"resources": [{{"id": 4, "name": "near", "site": "hq", {neighbour}}}]}}"#
            );
            assert!(SeedFile::parse(&text).is_ok(), "{neighbour}");
        }
    }
}
