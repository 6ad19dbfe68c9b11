//! Values shared by several messages and by both directions.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, RelayId, ResourceId};
use crate::portal::{IpNetwork, PublicKey, CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6};

/// The payload of `phx_join`: the node's WireGuard public key, and the number of its process.
/// Who the node is comes from the token in the WebSocket URL, never from the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinPayload {
    /// The node's WireGuard public key; the portal hands it to the other side of each
    /// connection.
    pub public_key: PublicKey,
    /// A number the node draws when its process starts, the same for every join of that
    /// process. A client joining with another number than before was restarted: its peers'
    /// connections to it are set up afresh (new preshared keys and ICE credentials) rather
    /// than kept with what the previous process left in them (its remote candidates). Absent
    /// from nodes that do not send it: then nothing is told apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u64>,
}

/// The ICE username fragment and password of one side of a connection. The portal generates
/// both sides' credentials so neither node has to trust the other's choice.
///
/// On the wire: `{"username": "...", "password": "..."}` (ufrag and pwd).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCredentials {
    /// The ICE username fragment (`ice-ufrag`).
    pub username: String,
    /// The ICE password (`ice-pwd`).
    pub password: String,
}

impl fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A private resource as the portal describes it:
/// `{"id": 7, "name": "db", "type": "host", "address": "10.0.0.5"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescription {
    /// The resource.
    pub id: ResourceId,
    /// A human-readable name.
    pub name: String,
    /// The host or range it covers.
    #[serde(flatten)]
    pub address: ResourceAddress,
}

/// What a resource covers. Kinds a node does not know (e.g. DNS resources) fail to decode, so
/// a list drops them and keeps the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResourceAddress {
    /// A range of addresses.
    Cidr {
        /// The range.
        address: IpNetwork,
    },
    /// A single host.
    Host {
        /// Its address.
        address: IpAddr,
    },
}

impl ResourceAddress {
    /// Whether `ip` belongs to the resource.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Self::Cidr { address } => address.contains(ip),
            Self::Host { address } => *address == ip,
        }
    }

    /// The resource as a network (a host is a /32 or /128).
    pub fn network(&self) -> IpNetwork {
        match self {
            Self::Cidr { address } => *address,
            Self::Host { address } => IpNetwork::host(*address),
        }
    }

    /// The client tunnel range ([`crate::portal::CLIENT_TUNNEL_IPV4`] or
    /// [`crate::portal::CLIENT_TUNNEL_IPV6`]) the resource overlaps, if any. Such a resource
    /// cannot be told apart from the clients' own addresses.
    pub fn client_tunnel_overlap(&self) -> Option<IpNetwork> {
        let network = self.network();
        [CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6]
            .into_iter()
            .find(|range| range.overlaps(&network))
    }
}

/// A TURN relay and the node's credentials for it (TURN REST scheme: the username carries its
/// expiry, the password is an HMAC the relay can recompute).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// The relay.
    pub id: RelayId,
    /// Where it listens.
    pub address: SocketAddr,
    /// `<unix-expiry>:<node id>`.
    pub username: String,
    /// base64(HMAC-SHA1(relay secret, username)).
    pub password: String,
    /// When the credentials stop working, in unix seconds.
    pub expires_at: u64,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The tunnel addresses the portal assigned to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The client's IPv4 tunnel address.
    pub ipv4: Ipv4Addr,
    /// The client's IPv6 tunnel address.
    pub ipv6: Ipv6Addr,
}

/// A client's access to a resource, valid until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    /// The client.
    pub client_id: ClientId,
    /// The resource it may reach.
    pub resource_id: ResourceId,
    /// Unix seconds after which the gateway must stop forwarding.
    pub expires_at: u64,
}

/// A client lost access to a resource; the gateway drops the flow, the client forgets the
/// resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRevoked {
    /// The client.
    pub client_id: ClientId,
    /// The resource.
    pub resource_id: ResourceId,
}

/// A resource no longer exists (or is no longer visible to this node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDeleted {
    /// The resource.
    pub id: ResourceId,
}

/// Relays came or went.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RelaysPresence {
    /// New relays, with this node's credentials.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub connected: Vec<Relay>,
    /// Relays to stop using.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub disconnected_ids: Vec<RelayId>,
}
