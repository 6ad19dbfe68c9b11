//! What a client and the portal tell each other.

use serde::{Deserialize, Serialize};

use crate::candidate::IceCandidate;
use crate::ids::{GatewayId, ResourceId};
use crate::portal::messages::messages;
use crate::portal::{
    AccessRevoked, IceCredentials, Interface, PresharedKey, PublicKey, Relay, RelaysPresence,
    ResourceDeleted, ResourceDescription,
};

messages! {
    /// Portal → client.
    pub enum ClientIngress {
        /// Sent after every successful join: the full state, replacing whatever the client had.
        "init" => Init(ClientInit),
        /// A connection to a gateway for a resource was authorized.
        "flow_authorized" => FlowAuthorized(ConnectionDetails),
        /// Candidates of a gateway.
        "ice_candidates" => IceCandidates(GatewayCandidates),
        /// Candidates a gateway no longer uses.
        "invalidate_ice_candidates" => InvalidateIceCandidates(GatewayCandidates),
        /// A resource the client may reach appeared or changed.
        "resource_created_or_updated" => ResourceCreatedOrUpdated(ResourceDescription),
        /// A resource is gone.
        "resource_deleted" => ResourceDeleted(ResourceDeleted),
        /// The client may no longer reach a resource.
        "access_revoked" => AccessRevoked(AccessRevoked),
        /// Relays came or went.
        "relays_presence" => RelaysPresence(RelaysPresence),
        /// A gateway this client has a connection to started anew (it joined with another
        /// key): what the previous process held is gone, so the connection is dead.
        "gateway_restarted" => GatewayRestarted(GatewayRestarted),
    }
}

messages! {
    /// Client → portal.
    pub enum ClientEgress {
        /// Asks for a connection to a resource; answered by a reply (`ok`, or `error` with a
        /// reason such as `unauthorized`) and, when authorized, a `flow_authorized` push.
        "request_connection" => RequestConnection(RequestConnection),
        /// The client's candidates, for one gateway.
        "ice_candidates" => IceCandidates(GatewayCandidates),
        /// Candidates the client no longer uses, for one gateway.
        "invalidate_ice_candidates" => InvalidateIceCandidates(GatewayCandidates),
    }
}

/// The payload of the client's `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInit {
    /// The client's tunnel addresses.
    pub interface: Interface,
    /// Every resource the client may reach.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub resources: Vec<ResourceDescription>,
    /// The relays, with this client's credentials.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub relays: Vec<Relay>,
    /// The process of every joined gateway on a site the client may reach. A client cut off
    /// from the portal misses `gateway_restarted`; on its rejoin it fails each connection
    /// made with another process of that gateway (see [`ConnectionDetails::gateway_instance`]).
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub gateways: Vec<GatewayInstance>,
}

/// A gateway and the number of its current process (see [`crate::portal::JoinPayload::instance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInstance {
    /// The gateway.
    pub gateway_id: GatewayId,
    /// The number its process joined with.
    pub instance: u64,
}

/// The payload of `request_connection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestConnection {
    /// The resource the client wants to reach.
    pub resource_id: ResourceId,
}

/// The payload of `flow_authorized`: everything the client needs to connect to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionDetails {
    /// The resource the flow is for.
    pub resource_id: ResourceId,
    /// The gateway to connect to.
    pub gateway_id: GatewayId,
    /// Its WireGuard public key.
    pub gateway_public_key: PublicKey,
    /// The client's own ICE credentials.
    pub client_ice: IceCredentials,
    /// The gateway's ICE credentials.
    pub gateway_ice: IceCredentials,
    /// The preshared key of this client–gateway pair.
    pub preshared_key: PresharedKey,
    /// Unix seconds after which the authorization ends.
    pub expires_at: u64,
    /// The number of the gateway process that accepted the flow, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_instance: Option<u64>,
}

/// The payload of `gateway_restarted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRestarted {
    /// The gateway.
    pub gateway_id: GatewayId,
}

/// Candidates of (or for) a gateway: the client sends its own addressed to `gateway_id`, the
/// portal delivers the gateway's naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCandidates {
    /// The gateway.
    pub gateway_id: GatewayId,
    /// RFC 8839 candidate strings.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub candidates: Vec<String>,
}

impl GatewayCandidates {
    /// The valid candidates, host first; malformed ones are skipped and logged.
    pub fn parse(&self) -> Vec<IceCandidate> {
        IceCandidate::parse_list(self.candidates.iter().map(String::as_str))
    }
}
