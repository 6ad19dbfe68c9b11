//! The portal's lasting state: who exists, what they may reach, where the relays are, which node
//! owns which key; and [`Change`], the one way it changes.
//!
//! A seed file, the database and the admin API all end up here: a seed file is imported as a
//! [`Directory`], the database stores one and a log of [`Change`]s, and every admin request is a
//! [`Change`] that [`Directory::check`] accepts or refuses before anything is written. Tokens are
//! kept as digests only ([`TokenDigest`]): a copy of the database does not let anyone connect.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use node_proto::ids::{ClientId, GatewayId, RelayId, ResourceId};
use node_proto::portal::{PublicKey, CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6};
use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use crate::portal::Identity;
use crate::seed::{PolicySeed, RelaySeed, ResourceError, ResourceSeed, SeedFile};

/// A node's token as the portal keeps it: its SHA-1 digest, written as hex. Comparing digests
/// makes every comparison one length (see `Portal::authenticate`); recovering a token from its
/// digest would take a preimage, which SHA-1's known (collision) weakness does not give.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenDigest(pub [u8; 20]);

impl TokenDigest {
    /// The digest of a token.
    pub fn of(token: &[u8]) -> Self {
        Self(Sha1::digest(token).into())
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({self})")
    }
}

impl fmt::Display for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A token digest that is not 40 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a token digest is 40 hex digits")]
pub struct BadTokenDigest;

impl FromStr for TokenDigest {
    type Err = BadTokenDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 40 || !s.is_ascii() {
            return Err(BadTokenDigest);
        }
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BadTokenDigest)?;
        }
        Ok(Self(out))
    }
}

impl Serialize for TokenDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A user's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Its id.
    pub id: ClientId,
    /// For operators.
    #[serde(default)]
    pub name: String,
    /// Its token's digest.
    pub token: TokenDigest,
    /// Its IPv4 tunnel address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 tunnel address.
    pub ipv6: Ipv6Addr,
}

/// A gateway; gateways of one site are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Its id.
    pub id: GatewayId,
    /// For operators.
    #[serde(default)]
    pub name: String,
    /// Its token's digest.
    pub token: TokenDigest,
    /// The site it serves.
    pub site: String,
}

/// One change to the [`Directory`]: what the admin API takes, the database logs and every
/// portal instance applies in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Adds a client, or changes one (its socket is closed, so it joins again with the new
    /// settings).
    AddClient {
        /// The client.
        client: Client,
    },
    /// Removes a client, its policies and its flows; its socket is closed.
    RemoveClient {
        /// Which.
        id: ClientId,
    },
    /// Adds a gateway, or changes one (its socket is closed).
    AddGateway {
        /// The gateway.
        gateway: Gateway,
    },
    /// Removes a gateway and its flows; its socket is closed.
    RemoveGateway {
        /// Which.
        id: GatewayId,
    },
    /// Adds or changes a resource.
    AddResource {
        /// The resource.
        resource: ResourceSeed,
    },
    /// Removes a resource and its policies.
    RemoveResource {
        /// Which.
        id: ResourceId,
    },
    /// Lets a client reach a resource (or changes how long its authorizations last).
    AddPolicy {
        /// The policy.
        policy: PolicySeed,
    },
    /// Takes a client's access to a resource away.
    RemovePolicy {
        /// Who.
        client_id: ClientId,
        /// What.
        resource_id: ResourceId,
    },
    /// Adds or moves a relay.
    AddRelay {
        /// The relay.
        relay: RelaySeed,
    },
    /// Removes a relay.
    RemoveRelay {
        /// Which.
        id: RelayId,
    },
    /// Ends a client's sessions: its flows end (its gateways are told) and its socket is closed,
    /// so it joins again and must be authorized anew. Changes nothing lasting.
    EndSessions {
        /// Whose.
        client_id: ClientId,
    },
    /// A node joined with a public key: the key stays its own until it joins with another one.
    OwnKey {
        /// The key.
        public_key: PublicKey,
        /// Its owner.
        node: Identity,
    },
}

/// Why a [`Change`] was refused; a refused change changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// No such client.
    #[error("no client {0}")]
    UnknownClient(ClientId),
    /// No such gateway.
    #[error("no gateway {0}")]
    UnknownGateway(GatewayId),
    /// No such resource.
    #[error("no resource {0}")]
    UnknownResource(ResourceId),
    /// No such relay.
    #[error("no relay {0}")]
    UnknownRelay(RelayId),
    /// No policy for that pair.
    #[error("no policy lets {0} reach {1}")]
    UnknownPolicy(ClientId, ResourceId),
    /// Another node has that token.
    #[error("another node has that token")]
    TokenInUse,
    /// Another client has that tunnel address.
    #[error("tunnel address {address} belongs to {owner}")]
    AddressInUse {
        /// The address.
        address: IpAddr,
        /// Its client.
        owner: ClientId,
    },
    /// A client's tunnel address outside the client tunnel ranges.
    #[error("tunnel address {0} is outside the client ranges {CLIENT_TUNNEL_IPV4} and {CLIENT_TUNNEL_IPV6}")]
    OutsideClientRange(IpAddr),
    /// An empty site name.
    #[error("a gateway needs a site")]
    EmptySite,
    /// A resource the portal cannot serve.
    #[error(transparent)]
    Resource(#[from] ResourceError),
}

/// Everything the portal keeps across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// Clients.
    pub clients: BTreeMap<ClientId, Client>,
    /// Gateways.
    pub gateways: BTreeMap<GatewayId, Gateway>,
    /// Resources.
    pub resources: BTreeMap<ResourceId, ResourceSeed>,
    /// Policies.
    pub policies: BTreeMap<(ClientId, ResourceId), PolicySeed>,
    /// Relays.
    pub relays: BTreeMap<RelayId, RelaySeed>,
    /// The node each public key was last joined by.
    pub key_owners: BTreeMap<PublicKey, Identity>,
}

/// A [`Directory`] as lists, the way the admin API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryView {
    /// Clients.
    pub clients: Vec<Client>,
    /// Gateways.
    pub gateways: Vec<Gateway>,
    /// Resources.
    pub resources: Vec<ResourceSeed>,
    /// Policies.
    pub policies: Vec<PolicySeed>,
    /// Relays.
    pub relays: Vec<RelaySeed>,
    /// Which node owns which public key.
    pub key_owners: Vec<KeyOwner>,
}

/// A public key and the node that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyOwner {
    /// The key.
    pub public_key: PublicKey,
    /// Its owner.
    pub node: Identity,
}

impl Directory {
    /// The directory as lists.
    pub fn view(&self) -> DirectoryView {
        DirectoryView {
            clients: self.clients.values().cloned().collect(),
            gateways: self.gateways.values().cloned().collect(),
            resources: self.resources.values().cloned().collect(),
            policies: self.policies.values().copied().collect(),
            relays: self.relays.values().copied().collect(),
            key_owners: self
                .key_owners
                .iter()
                .map(|(&public_key, &node)| KeyOwner { public_key, node })
                .collect(),
        }
    }

    /// A seed file's entries, tokens replaced by their digests. The seed file is expected to be
    /// valid ([`SeedFile::validate`]); a resource that is not is skipped.
    pub fn from_seed(seed: &SeedFile) -> Self {
        Self {
            clients: seed
                .clients
                .iter()
                .map(|c| {
                    let client = Client {
                        id: c.id,
                        name: c.name.clone(),
                        token: TokenDigest::of(c.token.as_bytes()),
                        ipv4: c.ipv4,
                        ipv6: c.ipv6,
                    };
                    (c.id, client)
                })
                .collect(),
            gateways: seed
                .gateways
                .iter()
                .map(|g| {
                    let gateway = Gateway {
                        id: g.id,
                        name: g.name.clone(),
                        token: TokenDigest::of(g.token.as_bytes()),
                        site: g.site.clone(),
                    };
                    (g.id, gateway)
                })
                .collect(),
            resources: seed
                .resources
                .iter()
                .filter(|r| match r.validate() {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(rid = %r.id, %error, "Skipping resource");
                        false
                    }
                })
                .map(|r| (r.id, r.clone()))
                .collect(),
            policies: seed
                .policies
                .iter()
                .map(|p| ((p.client_id, p.resource_id), *p))
                .collect(),
            relays: seed.relays.iter().map(|r| (r.id, *r)).collect(),
            key_owners: BTreeMap::new(),
        }
    }

    /// The changes that build this directory from an empty one, in an order that applies.
    pub fn changes(&self) -> Vec<Change> {
        let clients = self
            .clients
            .values()
            .map(|c| Change::AddClient { client: c.clone() });
        let gateways = self
            .gateways
            .values()
            .map(|g| Change::AddGateway { gateway: g.clone() });
        let resources = self.resources.values().map(|r| Change::AddResource {
            resource: r.clone(),
        });
        let policies = self
            .policies
            .values()
            .map(|p| Change::AddPolicy { policy: *p });
        let relays = self.relays.values().map(|r| Change::AddRelay { relay: *r });
        let owners = self
            .key_owners
            .iter()
            .map(|(&public_key, &node)| Change::OwnKey { public_key, node });
        clients
            .chain(gateways)
            .chain(resources)
            .chain(policies)
            .chain(relays)
            .chain(owners)
            .collect()
    }

    /// Whether `change` would apply: `Ok` means [`Directory::apply`] succeeds.
    pub fn check(&self, change: &Change) -> Result<(), ChangeError> {
        match change {
            Change::AddClient { client } => {
                for (ip, range) in [
                    (IpAddr::V4(client.ipv4), CLIENT_TUNNEL_IPV4),
                    (IpAddr::V6(client.ipv6), CLIENT_TUNNEL_IPV6),
                ] {
                    if !range.contains(ip) {
                        return Err(ChangeError::OutsideClientRange(ip));
                    }
                }
                self.token_free(client.token, Identity::Client(client.id))?;
                for other in self.clients.values().filter(|c| c.id != client.id) {
                    for (mine, theirs) in [
                        (IpAddr::V4(client.ipv4), IpAddr::V4(other.ipv4)),
                        (IpAddr::V6(client.ipv6), IpAddr::V6(other.ipv6)),
                    ] {
                        if mine == theirs {
                            return Err(ChangeError::AddressInUse {
                                address: mine,
                                owner: other.id,
                            });
                        }
                    }
                }
                Ok(())
            }
            Change::AddGateway { gateway } => {
                if gateway.site.is_empty() {
                    return Err(ChangeError::EmptySite);
                }
                self.token_free(gateway.token, Identity::Gateway(gateway.id))
            }
            Change::RemoveClient { id } | Change::EndSessions { client_id: id } => self
                .clients
                .contains_key(id)
                .then_some(())
                .ok_or(ChangeError::UnknownClient(*id)),
            Change::RemoveGateway { id } => self
                .gateways
                .contains_key(id)
                .then_some(())
                .ok_or(ChangeError::UnknownGateway(*id)),
            Change::AddResource { resource } => Ok(resource.validate()?),
            Change::RemoveResource { id } => self
                .resources
                .contains_key(id)
                .then_some(())
                .ok_or(ChangeError::UnknownResource(*id)),
            Change::AddPolicy { policy } => {
                if !self.clients.contains_key(&policy.client_id) {
                    return Err(ChangeError::UnknownClient(policy.client_id));
                }
                if !self.resources.contains_key(&policy.resource_id) {
                    return Err(ChangeError::UnknownResource(policy.resource_id));
                }
                Ok(())
            }
            Change::RemovePolicy {
                client_id,
                resource_id,
            } => self
                .policies
                .contains_key(&(*client_id, *resource_id))
                .then_some(())
                .ok_or(ChangeError::UnknownPolicy(*client_id, *resource_id)),
            Change::AddRelay { .. } | Change::OwnKey { .. } => Ok(()),
            Change::RemoveRelay { id } => self
                .relays
                .contains_key(id)
                .then_some(())
                .ok_or(ChangeError::UnknownRelay(*id)),
        }
    }

    /// Applies `change` if [`Directory::check`] accepts it.
    pub fn apply(&mut self, change: &Change) -> Result<(), ChangeError> {
        self.check(change)?;
        match change {
            Change::AddClient { client } => {
                self.clients.insert(client.id, client.clone());
            }
            Change::RemoveClient { id } => {
                self.clients.remove(id);
                self.policies.retain(|(c, _), _| c != id);
                self.key_owners
                    .retain(|_, owner| *owner != Identity::Client(*id));
            }
            Change::AddGateway { gateway } => {
                self.gateways.insert(gateway.id, gateway.clone());
            }
            Change::RemoveGateway { id } => {
                self.gateways.remove(id);
                self.key_owners
                    .retain(|_, owner| *owner != Identity::Gateway(*id));
            }
            Change::AddResource { resource } => {
                self.resources.insert(resource.id, resource.clone());
            }
            Change::RemoveResource { id } => {
                self.resources.remove(id);
                self.policies.retain(|(_, r), _| r != id);
            }
            Change::AddPolicy { policy } => {
                self.policies
                    .insert((policy.client_id, policy.resource_id), *policy);
            }
            Change::RemovePolicy {
                client_id,
                resource_id,
            } => {
                self.policies.remove(&(*client_id, *resource_id));
            }
            Change::AddRelay { relay } => {
                self.relays.insert(relay.id, *relay);
            }
            Change::RemoveRelay { id } => {
                self.relays.remove(id);
            }
            Change::EndSessions { .. } => {}
            Change::OwnKey { public_key, node } => {
                self.key_owners.retain(|_, owner| owner != node);
                self.key_owners.insert(*public_key, *node);
            }
        }
        Ok(())
    }

    fn token_free(&self, token: TokenDigest, of: Identity) -> Result<(), ChangeError> {
        let clients = self
            .clients
            .values()
            .map(|c| (c.token, Identity::Client(c.id)));
        let gateways = self
            .gateways
            .values()
            .map(|g| (g.token, Identity::Gateway(g.id)));
        match clients.chain(gateways).find(|(t, _)| *t == token) {
            Some((_, owner)) if owner != of => Err(ChangeError::TokenInUse),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
