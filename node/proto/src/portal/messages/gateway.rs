//! What a gateway and the portal tell each other.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::candidate::IceCandidate;
use crate::ids::{ClientId, ResourceId};
use crate::portal::messages::messages;
use crate::portal::{
    AccessRevoked, Authorization, IceCredentials, PresharedKey, PublicKey, Relay, RelaysPresence,
    ResourceDeleted, ResourceDescription,
};

messages! {
    /// Portal → gateway.
    pub enum GatewayIngress {
        /// Sent after every successful join: relays and the authorizations still valid.
        "init" => Init(GatewayInit),
        /// A client may now reach a resource through this gateway.
        "authorize_flow" => AuthorizeFlow(AuthorizeFlow),
        /// Candidates of a client.
        "ice_candidates" => IceCandidates(ClientCandidates),
        /// Candidates a client no longer uses.
        "invalidate_ice_candidates" => InvalidateIceCandidates(ClientCandidates),
        /// A resource of this gateway's site appeared or changed.
        "resource_created_or_updated" => ResourceCreatedOrUpdated(ResourceDescription),
        /// A resource of this gateway's site is gone; its flows end.
        "resource_deleted" => ResourceDeleted(ResourceDeleted),
        /// A client may no longer reach a resource; its flow ends.
        "access_revoked" => AccessRevoked(AccessRevoked),
        /// Relays came or went.
        "relays_presence" => RelaysPresence(RelaysPresence),
    }
}

messages! {
    /// Gateway → portal.
    pub enum GatewayEgress {
        /// The gateway's candidates, for one client.
        "ice_candidates" => IceCandidates(ClientCandidates),
        /// Candidates the gateway no longer uses, for one client.
        "invalidate_ice_candidates" => InvalidateIceCandidates(ClientCandidates),
        /// The gateway holds an `authorize_flow`'s connection: the client may be told.
        "flow_accepted" => FlowAccepted(FlowAccepted),
    }
}

/// The gateway's answer to an `authorize_flow` it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowAccepted {
    /// The flow's client.
    pub client_id: ClientId,
    /// The flow's resource.
    pub resource_id: ResourceId,
    /// The gateway's ICE username fragment of that connection: it names the parameters
    /// accepted, so that an answer to an older `authorize_flow` is told apart.
    pub ice_ufrag: String,
}

/// The payload of the gateway's `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInit {
    /// The relays, with this gateway's credentials.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub relays: Vec<Relay>,
    /// Flows the portal still considers authorized.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub authorizations: Vec<Authorization>,
}

/// The client side of an authorized flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowClient {
    /// The client.
    pub id: ClientId,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its IPv4 tunnel address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 tunnel address.
    pub ipv6: Ipv6Addr,
}

/// The payload of `authorize_flow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeFlow {
    /// Who connects.
    pub client: FlowClient,
    /// The resource it may reach.
    pub resource: ResourceDescription,
    /// The client's ICE credentials.
    pub client_ice: IceCredentials,
    /// The gateway's own ICE credentials.
    pub gateway_ice: IceCredentials,
    /// The preshared key of this client–gateway pair.
    pub preshared_key: PresharedKey,
    /// Unix seconds after which the gateway must stop forwarding.
    pub expires_at: u64,
}

/// Candidates of (or for) a client: the gateway sends its own addressed to `client_id`, the
/// portal delivers the client's naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCandidates {
    /// The client.
    pub client_id: ClientId,
    /// RFC 8839 candidate strings.
    #[serde(default, deserialize_with = "crate::portal::lenient::vec")]
    pub candidates: Vec<String>,
}

impl ClientCandidates {
    /// The valid candidates, host first; malformed ones are skipped and logged.
    pub fn parse(&self) -> Vec<IceCandidate> {
        IceCandidate::parse_list(self.candidates.iter().map(String::as_str))
    }
}
