//! [`Portal`]: the control plane's sans-IO core.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use node_proto::candidate::IceCandidate;
use node_proto::ids::{ClientId, GatewayId, RelayId, ResourceId};
use node_proto::portal::frame::{Frame, HEARTBEAT, PHOENIX_TOPIC, PHX_JOIN, PHX_LEAVE};
use node_proto::portal::messages::{
    AuthorizeFlow, ClientCandidates, ClientEgress, ClientIngress, ClientInit, ConnectionDetails,
    FlowAccepted, FlowClient, GatewayCandidates, GatewayEgress, GatewayIngress, GatewayInit,
    GatewayInstance, GatewayRestarted, RequestConnection,
};
use node_proto::portal::{
    AccessRevoked, Authorization, IceCredentials, Interface, JoinPayload, Message, PresharedKey,
    PublicKey, Relay, RelaysPresence, ResourceDeleted,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq as _;

use crate::credentials::rest_credentials;
use crate::directory::{Change, ChangeError, Client, Directory, Gateway, TokenDigest};
use crate::seed::{PolicySeed, RelaySeed, ResourceError, ResourceSeed, SeedFile};

/// How long an authorization lasts when its policy does not say.
pub const DEFAULT_AUTHORIZATION: Duration = Duration::from_secs(3600);

/// What the portal is started with besides the seed file.
#[derive(Clone)]
pub struct PortalConfig {
    /// Shared with the relays; signs relay credentials.
    pub relay_secret: String,
    /// Seeds every random choice (PSKs, ICE credentials, gateway picks).
    pub seed: u64,
    /// Which start of the portal this is: each generation draws different keys from the same
    /// seed, so a restart rotates every PSK.
    pub generation: u64,
    /// See [`DEFAULT_AUTHORIZATION`].
    pub default_authorization: Duration,
    /// How long relay credentials stay valid.
    pub relay_credentials_lifetime: Duration,
}

impl PortalConfig {
    /// Defaults for everything but the secret and the seed.
    pub fn new(relay_secret: impl Into<String>, seed: u64) -> Self {
        Self {
            relay_secret: relay_secret.into(),
            seed,
            generation: 0,
            default_authorization: DEFAULT_AUTHORIZATION,
            relay_credentials_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

impl fmt::Debug for PortalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortalConfig")
            .field("relay_secret", &"<redacted>")
            .field("seed", &self.seed)
            .field("generation", &self.generation)
            .field("default_authorization", &self.default_authorization)
            .field(
                "relay_credentials_lifetime",
                &self.relay_credentials_lifetime,
            )
            .finish()
    }
}

/// Who is on the other end of a socket, as its token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// A client.
    Client(ClientId),
    /// A gateway.
    Gateway(GatewayId),
}

impl Identity {
    fn room(self) -> &'static str {
        match self {
            Self::Client(_) => "client",
            Self::Gateway(_) => "gateway",
        }
    }

    /// The client's id, for a `cid` log field.
    fn cid(self) -> Option<ClientId> {
        match self {
            Self::Client(cid) => Some(cid),
            Self::Gateway(_) => None,
        }
    }

    /// The gateway's id, for a `gid` log field.
    fn gid(self) -> Option<GatewayId> {
        match self {
            Self::Client(_) => None,
            Self::Gateway(gid) => Some(gid),
        }
    }

    fn id(self) -> u64 {
        match self {
            Self::Client(ClientId(id)) | Self::Gateway(GatewayId(id)) => id,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(id) => write!(f, "{id}"),
            Self::Gateway(id) => write!(f, "{id}"),
        }
    }
}

/// A socket, numbered by the runtime; never reused, even across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a text frame on a socket.
    Send {
        /// The socket.
        conn: ConnId,
        /// The frame.
        text: String,
    },
    /// Close a socket (with this reason in the close frame).
    Close {
        /// The socket.
        conn: ConnId,
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct Session {
    identity: Identity,
    /// The joined room and the node's key, once joined.
    joined: Option<(String, PublicKey)>,
    /// When the node gets fresh relay credentials, while joined: half their lifetime after
    /// the last ones, so a node that stays connected for days never holds expired ones.
    renew_relays_at: Option<SystemTime>,
}

/// What a client–gateway pair shares for one portal generation.
struct Pair {
    psk: PresharedKey,
    client_ice: IceCredentials,
    gateway_ice: IceCredentials,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    gateway: GatewayId,
    expires_at: u64,
}

/// The control plane's sans-IO core.
///
/// # Driving it
/// The runtime authenticates a socket's token with [`Self::authenticate`], numbers the socket
/// and announces it with [`Self::connect`], feeds every text frame to [`Self::handle_text`] and
/// reports the end with [`Self::disconnect`]. Administrative changes go through
/// [`Self::add_resource`], [`Self::remove_resource`], [`Self::add_policy`], [`Self::revoke`],
/// [`Self::add_relay`] and [`Self::remove_relay`]. After every call, drain
/// [`Self::poll_output`]. Wall-clock time comes in as `now` (for expiries); randomness from the
/// seed and generation in [`PortalConfig`].
///
/// A restart is a new `Portal` from the same seed file with the next generation: every session
/// and every piece of signalling state (PSKs, ICE credentials, authorizations) is gone.
pub struct Portal {
    config: PortalConfig,
    rng: ChaCha20Rng,

    /// Who exists, what they may reach, the relays and the key owners: what outlives a
    /// restart. (A key stays its owner's while it is offline too, until it joins with another
    /// one.)
    dir: Directory,

    sessions: BTreeMap<ConnId, Session>,
    /// The socket of each node that has one (joined or not).
    online: BTreeMap<Identity, ConnId>,
    pairs: BTreeMap<(ClientId, GatewayId), Pair>,
    flows: BTreeMap<(ClientId, ResourceId), Flow>,
    /// The expiry last told a gateway for each (client, resource): a flow's, or one its init
    /// extended. What the gateway enforces; see [`Portal::granted_until`]. At most one per pair
    /// the directory holds.
    granted: BTreeMap<(ClientId, ResourceId), u64>,
    /// The key each gateway last joined with: a gateway that rejoins with the same key is the
    /// same process, and holds what it was told before.
    gateway_keys: BTreeMap<GatewayId, PublicKey>,
    /// The process number each client last joined with (see [`JoinPayload::instance`]).
    client_instances: BTreeMap<ClientId, u64>,
    /// The process number each gateway last joined with.
    gateway_instances: BTreeMap<GatewayId, u64>,

    outputs: VecDeque<Output>,
    /// Changes the core made to [`Self::dir`] by itself (key owners), for the runtime to store.
    recorded: VecDeque<Change>,
    /// Frames received from nodes.
    frames: u64,
    /// Frames refused, by the reason sent back (or `malformed_frame`, which gets no reply).
    refused: BTreeMap<&'static str, u64>,
    /// Administrative changes applied.
    changes: u64,
    /// Relay credential renewals sent to nodes.
    credential_renewals: u64,
}

/// A snapshot of what the portal holds, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortalMetrics {
    /// Sockets open.
    pub sockets: usize,
    /// Clients joined.
    pub joined_clients: usize,
    /// Gateways joined.
    pub joined_gateways: usize,
    /// Live flows (authorizations handed out).
    pub flows: usize,
    /// Clients in the directory.
    pub clients: usize,
    /// Gateways in the directory.
    pub gateways: usize,
    /// Resources in the directory.
    pub resources: usize,
    /// Policies in the directory.
    pub policies: usize,
    /// Relays in the directory.
    pub relays: usize,
    /// Frames received from nodes.
    pub frames: u64,
    /// Frames refused, by reason.
    pub refused: Vec<(&'static str, u64)>,
    /// Administrative changes applied.
    pub changes: u64,
    /// Relay credential renewals sent to nodes.
    pub credential_renewals: u64,
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Portal {
    /// A portal serving `seed`; `config.generation` tells restarts apart.
    pub fn new(seed: &SeedFile, config: PortalConfig) -> Self {
        Self::with_directory(Directory::from_seed(seed), config)
    }

    /// A portal serving a stored directory (see [`crate::store`]).
    pub fn with_directory(dir: Directory, config: PortalConfig) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        rng.set_stream(config.generation);
        Self {
            rng,
            dir,
            sessions: BTreeMap::new(),
            online: BTreeMap::new(),
            pairs: BTreeMap::new(),
            flows: BTreeMap::new(),
            granted: BTreeMap::new(),
            gateway_keys: BTreeMap::new(),
            client_instances: BTreeMap::new(),
            gateway_instances: BTreeMap::new(),
            outputs: VecDeque::new(),
            recorded: VecDeque::new(),
            frames: 0,
            refused: BTreeMap::new(),
            changes: 0,
            credential_renewals: 0,
            config,
        }
    }

    /// What outlives a restart.
    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// What the portal holds and has counted, for metrics.
    pub fn metrics(&self) -> PortalMetrics {
        let joined = self.joined_nodes();
        let joined_clients = joined
            .iter()
            .filter(|(i, _)| matches!(i, Identity::Client(_)))
            .count();
        PortalMetrics {
            sockets: self.sessions.len(),
            joined_clients,
            joined_gateways: joined.len() - joined_clients,
            flows: self.flows.len(),
            clients: self.dir.clients.len(),
            gateways: self.dir.gateways.len(),
            resources: self.dir.resources.len(),
            policies: self.dir.policies.len(),
            relays: self.dir.relays.len(),
            frames: self.frames,
            refused: self.refused.iter().map(|(&r, &n)| (r, n)).collect(),
            changes: self.changes,
            credential_renewals: self.credential_renewals,
        }
    }

    /// Who a token (percent-decoded) belongs to; `None` means the socket must be refused.
    ///
    /// The time this takes does not depend on how much of the token matched: digests of one
    /// length are compared in constant time, against every node's token without stopping at a
    /// match.
    pub fn authenticate(&self, token: &[u8]) -> Option<Identity> {
        let digest = TokenDigest::of(token);
        let clients = self
            .dir
            .clients
            .values()
            .map(|c| (c.token, Identity::Client(c.id)));
        let gateways = self
            .dir
            .gateways
            .values()
            .map(|g| (g.token, Identity::Gateway(g.id)));
        let mut found = None;
        for (candidate, identity) in clients.chain(gateways) {
            if bool::from(candidate.0.ct_eq(&digest.0)) {
                found = Some(identity);
            }
        }
        found
    }

    /// A new socket for `identity`. An older socket of the same node is closed.
    pub fn connect(&mut self, conn: ConnId, identity: Identity) {
        if let Some(old) = self.online.insert(identity, conn) {
            tracing::info!(node = %identity, "Replacing the node's previous connection");
            self.sessions.remove(&old);
            self.outputs.push_back(Output::Close {
                conn: old,
                reason: "replaced by a newer connection".into(),
            });
        }
        tracing::info!(node = %identity, conn = conn.0, "Node connected");
        self.sessions.insert(
            conn,
            Session {
                identity,
                joined: None,
                renew_relays_at: None,
            },
        );
    }

    /// The socket is gone.
    pub fn disconnect(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        if self.online.get(&session.identity) == Some(&conn) {
            self.online.remove(&session.identity);
        }
        tracing::info!(node = %session.identity, conn = conn.0, "Node disconnected");
    }

    /// Until when (unix seconds) this portal last told a gateway that `cid` may reach `rid`:
    /// past it, the gateway must let nothing of the client's through to the resource, unless
    /// a newer authorization moved it. None if it told none (or the access was taken away).
    pub fn granted_until(&self, cid: ClientId, rid: ResourceId) -> Option<u64> {
        self.granted.get(&(cid, rid)).copied()
    }

    /// Until when (unix seconds) the current flow of `cid` to `rid` lasts, if this portal
    /// made one (flows do not survive a restart).
    pub fn flow_until(&self, cid: ClientId, rid: ResourceId) -> Option<u64> {
        self.flows.get(&(cid, rid)).map(|f| f.expires_at)
    }

    /// Whether the node has joined its room.
    pub fn is_joined(&self, identity: Identity) -> bool {
        self.joined_conn(identity).is_some()
    }

    /// The preshared key of a client–gateway pair in this generation, if a flow created one
    /// (for simulation checks).
    pub fn preshared_key(&self, cid: ClientId, gid: GatewayId) -> Option<PresharedKey> {
        self.pairs.get(&(cid, gid)).map(|p| p.psk)
    }

    /// When [`Self::handle_timeout`] has something to do: the next renewal of a joined node's
    /// relay credentials.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.sessions
            .values()
            .filter(|s| s.joined.is_some())
            .filter_map(|s| s.renew_relays_at)
            .min()
    }

    /// Renews the relay credentials of every joined node whose renewal is due: a
    /// `relays_presence` with every relay under fresh credentials. The node moves its
    /// allocations to them (see the relay's `allocation_for`) without tearing them down.
    pub fn handle_timeout(&mut self, now: SystemTime) {
        let due: Vec<(ConnId, Identity)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.joined.is_some() && s.renew_relays_at.is_some_and(|t| t <= now))
            .map(|(conn, s)| (*conn, s.identity))
            .collect();
        let next = self.relay_renewal_after(now);
        for (conn, identity) in due {
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.renew_relays_at = Some(next);
            }
            let connected = self.relays_for(identity, now);
            if connected.is_empty() {
                continue;
            }
            tracing::debug!(node = %identity, relays = connected.len(), "Renewing relay credentials");
            self.credential_renewals += 1;
            let presence = RelaysPresence {
                connected,
                disconnected_ids: vec![],
            };
            self.push_presence(conn, identity, presence);
        }
    }

    fn relay_renewal_after(&self, now: SystemTime) -> SystemTime {
        // At least a second apart, whatever the configured lifetime.
        now + (self.config.relay_credentials_lifetime / 2).max(Duration::from_secs(1))
    }

    /// The next thing for the runtime to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A text frame from a socket.
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now: SystemTime) {
        let Some(identity) = self.sessions.get(&conn).map(|s| s.identity) else {
            tracing::debug!(conn = conn.0, "Frame from an unknown socket");
            return;
        };
        self.frames += 1;
        let frame = match Frame::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(node = %identity, %error, "Dropping malformed frame");
                *self.refused.entry("malformed_frame").or_default() += 1;
                return;
            }
        };
        if frame.topic == PHOENIX_TOPIC {
            if frame.event == HEARTBEAT {
                self.reply_ok(conn, &frame, json!({}));
            } else {
                tracing::debug!(event = %frame.event, "Ignoring unknown phoenix event");
            }
            return;
        }
        if frame.event == PHX_JOIN {
            self.join(conn, identity, &frame, now);
            return;
        }
        let joined_topic = self
            .sessions
            .get(&conn)
            .and_then(|s| s.joined.as_ref())
            .map(|(topic, _)| topic.clone());
        if joined_topic.as_deref() != Some(frame.topic.as_str()) {
            self.reply_error(conn, &frame, "not_joined");
            return;
        }
        if frame.event == PHX_LEAVE {
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.joined = None;
            }
            self.reply_ok(conn, &frame, json!({}));
            return;
        }
        match identity {
            Identity::Client(cid) => match ClientEgress::from_frame(&frame) {
                Ok(Some(message)) => self.handle_client(conn, cid, &frame, message, now),
                Ok(None) => {
                    tracing::debug!(%cid, event = %frame.event, "Ignoring unknown event");
                    self.reply_error(conn, &frame, "unknown_event");
                }
                Err(error) => {
                    tracing::debug!(%cid, %error, "Rejecting message");
                    self.reply_error(conn, &frame, "invalid_payload");
                }
            },
            Identity::Gateway(gid) => match GatewayEgress::from_frame(&frame) {
                Ok(Some(message)) => self.handle_gateway(conn, gid, &frame, message, now),
                Ok(None) => {
                    tracing::debug!(%gid, event = %frame.event, "Ignoring unknown event");
                    self.reply_error(conn, &frame, "unknown_event");
                }
                Err(error) => {
                    tracing::debug!(%gid, %error, "Rejecting message");
                    self.reply_error(conn, &frame, "invalid_payload");
                }
            },
        }
    }

    /// Adds or changes a resource and tells the clients allowed to reach it and the gateways of
    /// its site. A resource that fails [`ResourceSeed::validate`] is refused and changes
    /// nothing.
    pub fn add_resource(&mut self, resource: ResourceSeed) -> Result<(), ResourceError> {
        if let Err(error) = resource.validate() {
            tracing::info!(rid = %resource.id, %error, "Refusing resource");
            return Err(error);
        }
        let rid = resource.id;
        if let Some(old) = self.dir.resources.get(&rid) {
            if old.site != resource.site {
                // The old site's gateways no longer serve it.
                let old = old.clone();
                self.end_flows_of_resource(rid);
                let deleted = ResourceDeleted { id: rid };
                for gid in self.gateways_of_site(&old.site) {
                    self.push_gateway(gid, &GatewayIngress::ResourceDeleted(deleted));
                }
            }
        }
        tracing::debug!(%rid, site = %resource.site, "Resource created or updated");
        let description = resource.description();
        self.dir.resources.insert(rid, resource.clone());
        for cid in self.clients_with_policy(rid) {
            self.push_client(
                cid,
                &ClientIngress::ResourceCreatedOrUpdated(description.clone()),
            );
        }
        for gid in self.gateways_of_site(&resource.site) {
            self.push_gateway(
                gid,
                &GatewayIngress::ResourceCreatedOrUpdated(description.clone()),
            );
        }
        Ok(())
    }

    /// Deletes a resource, its policies and its flows. Returns whether it existed.
    pub fn remove_resource(&mut self, rid: ResourceId) -> bool {
        let Some(resource) = self.dir.resources.get(&rid).cloned() else {
            return false;
        };
        tracing::debug!(%rid, "Resource deleted");
        let deleted = ResourceDeleted { id: rid };
        for cid in self.clients_with_policy(rid) {
            self.push_client(cid, &ClientIngress::ResourceDeleted(deleted));
        }
        for gid in self.gateways_of_site(&resource.site) {
            self.push_gateway(gid, &GatewayIngress::ResourceDeleted(deleted));
        }
        // The resource and its policies, as the directory's own rule has it.
        let _ = self.dir.apply(&Change::RemoveResource { id: rid });
        self.flows.retain(|(_, r), _| *r != rid);
        self.granted.retain(|(_, r), _| *r != rid);
        true
    }

    /// Lets a client reach a resource (or changes how long its authorizations last).
    pub fn add_policy(&mut self, policy: PolicySeed) {
        let (cid, rid) = (policy.client_id, policy.resource_id);
        tracing::debug!(%cid, %rid, "Policy added");
        self.dir.policies.insert((cid, rid), policy);
        if let Some(resource) = self.dir.resources.get(&rid) {
            let description = resource.description();
            self.push_client(cid, &ClientIngress::ResourceCreatedOrUpdated(description));
        }
    }

    /// Takes a client's access to a resource away: the policy goes, and the client and the
    /// gateway of a current flow are told. Returns whether there was a policy.
    pub fn revoke(&mut self, cid: ClientId, rid: ResourceId) -> bool {
        let had_policy = self.dir.policies.remove(&(cid, rid)).is_some();
        let flow = self.flows.remove(&(cid, rid));
        self.granted.remove(&(cid, rid));
        if !had_policy && flow.is_none() {
            return false;
        }
        tracing::debug!(%cid, %rid, "Access revoked");
        let revoked = AccessRevoked {
            client_id: cid,
            resource_id: rid,
        };
        if let Some(flow) = flow {
            self.push_gateway(flow.gateway, &GatewayIngress::AccessRevoked(revoked));
        }
        self.push_client(cid, &ClientIngress::AccessRevoked(revoked));
        had_policy
    }

    /// A relay came online: every joined node gets credentials for it.
    pub fn add_relay(&mut self, relay: RelaySeed, now: SystemTime) {
        tracing::debug!(relay = %relay.id, addr = %relay.address, "Relay connected");
        self.dir.relays.insert(relay.id, relay);
        for (identity, conn) in self.joined_nodes() {
            let presence = RelaysPresence {
                connected: vec![self.relay_for(identity, relay.id, relay.address, now)],
                disconnected_ids: vec![],
            };
            self.push_presence(conn, identity, presence);
        }
    }

    /// A relay went away: every joined node is told to stop using it. Returns whether it was
    /// known.
    pub fn remove_relay(&mut self, id: RelayId) -> bool {
        if self.dir.relays.remove(&id).is_none() {
            return false;
        }
        tracing::debug!(relay = %id, "Relay disconnected");
        for (identity, conn) in self.joined_nodes() {
            let presence = RelaysPresence {
                connected: vec![],
                disconnected_ids: vec![id],
            };
            self.push_presence(conn, identity, presence);
        }
        true
    }

    /// Applies an administrative [`Change`] (from the admin API, the store's log or another
    /// instance) through the same paths as the methods above: nodes are told at once. A change
    /// [`Directory::check`] refuses changes nothing.
    pub fn apply(&mut self, change: &Change, now: SystemTime) -> Result<(), ChangeError> {
        self.dir.check(change)?;
        self.changes += 1;
        match change {
            Change::AddClient { client } => self.add_client(client.clone()),
            Change::RemoveClient { id } => self.remove_client(*id),
            Change::AddGateway { gateway } => self.add_gateway(gateway.clone()),
            Change::RemoveGateway { id } => self.remove_gateway(*id),
            Change::AddResource { resource } => self.add_resource(resource.clone())?,
            Change::RemoveResource { id } => {
                self.remove_resource(*id);
            }
            Change::AddPolicy { policy } => self.add_policy(*policy),
            Change::RemovePolicy {
                client_id,
                resource_id,
            } => {
                self.revoke(*client_id, *resource_id);
            }
            Change::AddRelay { relay } => self.add_relay(*relay, now),
            Change::RemoveRelay { id } => {
                self.remove_relay(*id);
            }
            Change::EndSessions { client_id } => self.end_sessions(*client_id),
            // Recorded by whichever instance saw the join; nothing to tell anyone.
            Change::OwnKey { .. } => self.dir.apply(change)?,
        }
        Ok(())
    }

    /// Adds a client, or changes one: a changed client's sessions end, so it joins again with
    /// its new address (or must present its new token).
    fn add_client(&mut self, client: Client) {
        let cid = client.id;
        let changed = self.dir.clients.get(&cid).is_some_and(|old| *old != client);
        tracing::info!(%cid, changed, "Client added");
        self.dir.clients.insert(cid, client);
        if changed {
            self.end_sessions(cid);
        }
    }

    fn remove_client(&mut self, cid: ClientId) {
        tracing::info!(%cid, "Client removed");
        self.end_sessions(cid);
        let _ = self.dir.apply(&Change::RemoveClient { id: cid });
    }

    /// Ends a client's flows (its gateways are told to revoke them) and closes its socket: it
    /// joins again and needs new authorizations, with new preshared keys.
    fn end_sessions(&mut self, cid: ClientId) {
        let ended: Vec<(ResourceId, Flow)> = self
            .flows
            .iter()
            .filter(|((c, _), _)| *c == cid)
            .map(|(&(_, rid), f)| (rid, *f))
            .collect();
        for (rid, flow) in ended {
            self.flows.remove(&(cid, rid));
            let revoked = AccessRevoked {
                client_id: cid,
                resource_id: rid,
            };
            self.push_gateway(flow.gateway, &GatewayIngress::AccessRevoked(revoked));
        }
        self.pairs.retain(|(c, _), _| *c != cid);
        self.client_instances.remove(&cid);
        self.close_node(Identity::Client(cid), "session ended by the portal");
    }

    /// Adds a gateway, or changes one: a changed gateway loses its flows and its socket, and
    /// joins again (on its new site, with its new token).
    fn add_gateway(&mut self, gateway: Gateway) {
        let gid = gateway.id;
        let changed = self
            .dir
            .gateways
            .get(&gid)
            .is_some_and(|old| *old != gateway);
        tracing::info!(%gid, site = %gateway.site, changed, "Gateway added");
        self.dir.gateways.insert(gid, gateway);
        if changed {
            self.drop_gateway_state(gid);
        }
    }

    fn remove_gateway(&mut self, gid: GatewayId) {
        tracing::info!(%gid, "Gateway removed");
        self.drop_gateway_state(gid);
        let _ = self.dir.apply(&Change::RemoveGateway { id: gid });
    }

    /// Forgets a gateway's flows and pairs and closes its socket. Its clients notice when their
    /// connections to it fail, and ask again.
    fn drop_gateway_state(&mut self, gid: GatewayId) {
        self.flows.retain(|_, f| f.gateway != gid);
        self.pairs.retain(|(_, g), _| *g != gid);
        self.gateway_keys.remove(&gid);
        self.gateway_instances.remove(&gid);
        self.close_node(Identity::Gateway(gid), "gateway changed by the portal");
    }

    fn close_node(&mut self, identity: Identity, reason: &str) {
        if let Some(conn) = self.online.remove(&identity) {
            self.sessions.remove(&conn);
            self.outputs.push_back(Output::Close {
                conn,
                reason: reason.into(),
            });
        }
    }

    fn join(&mut self, conn: ConnId, identity: Identity, frame: &Frame, now: SystemTime) {
        if !topic_matches(&frame.topic, identity) {
            tracing::debug!(node = %identity, topic = %frame.topic, "Join of a foreign topic");
            self.reply_error(conn, frame, "unmatched_topic");
            return;
        }
        let payload: JoinPayload = match serde_json::from_value(frame.payload.clone()) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::debug!(node = %identity, %error, "Invalid join payload");
                self.reply_error(conn, frame, "invalid_payload");
                return;
            }
        };
        if let Some(holder) = self.key_holder(payload.public_key, identity) {
            // The gateways find a client's connection by its key (and a client its gateway's):
            // a node claiming a key another one uses would take over that node's handshakes.
            tracing::info!(
                cid = identity.cid().map(tracing::field::display),
                gid = identity.gid().map(tracing::field::display),
                holder_cid = holder.cid().map(tracing::field::display),
                holder_gid = holder.gid().map(tracing::field::display),
                "Refusing a join with a key another node holds"
            );
            self.reply_error(conn, frame, "public_key_in_use");
            return;
        }
        let renew_at = self.relay_renewal_after(now);
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.joined = Some((frame.topic.clone(), payload.public_key));
            session.renew_relays_at = Some(renew_at);
        }
        // The key this node owned before (kept across portal restarts): another one means a
        // new process, as another process number does.
        let owned_before = self
            .dir
            .key_owners
            .iter()
            .find(|(_, owner)| **owner == identity)
            .map(|(key, _)| *key);
        self.own_key(identity, payload.public_key);
        let public_key = payload.public_key;
        tracing::info!(node = %identity, "Node joined");
        self.reply_ok(conn, frame, json!({}));
        let now_unix = unix(now);
        let relays = self.relays_for(identity, now);
        match identity {
            Identity::Client(cid) => {
                if let Some(instance) = payload.instance {
                    let previous = self.client_instances.insert(cid, instance);
                    if previous.is_some_and(|p| p != instance) {
                        // A new process: its gateways' connections are set up anew when it
                        // asks again, instead of kept with the old process's candidates.
                        self.pairs.retain(|(c, _), _| *c != cid);
                        tracing::info!(%cid, "Client restarted: its connections start afresh");
                    }
                }
                let Some(client) = self.dir.clients.get(&cid) else {
                    return;
                };
                let interface = Interface {
                    ipv4: client.ipv4,
                    ipv6: client.ipv6,
                };
                let resources = self
                    .dir
                    .policies
                    .keys()
                    .filter(|(c, _)| *c == cid)
                    .filter_map(|(_, rid)| self.dir.resources.get(rid))
                    .map(ResourceSeed::description)
                    .collect();
                let gateways = self.gateway_instances_for(cid);
                let init = ClientIngress::Init(ClientInit {
                    interface,
                    resources,
                    relays,
                    gateways,
                });
                self.send(conn, &frame.topic, &init);
                self.reannounce_client_flows(cid, now_unix);
            }
            Identity::Gateway(gid) => {
                let mut authorizations: Vec<Authorization> = self
                    .flows
                    .iter()
                    .filter(|(_, f)| f.gateway == gid && f.expires_at > now_unix)
                    .map(|(&(client_id, resource_id), f)| Authorization {
                        client_id,
                        resource_id,
                        expires_at: f.expires_at,
                    })
                    .collect();
                // Flows are signalling state and do not survive a portal restart, but access
                // does: every pair a policy allows on this gateway's site stays listed, so
                // the gateway keeps the tunnels it has and revokes only what policy removed.
                // (The gateway ignores pairs it never had a flow for.)
                let site = self.dir.gateways.get(&gid).map(|g| g.site.clone());
                for (&(client_id, resource_id), policy) in &self.dir.policies {
                    let on_site = self
                        .dir
                        .resources
                        .get(&resource_id)
                        .is_some_and(|r| Some(&r.site) == site.as_ref());
                    let listed = authorizations
                        .iter()
                        .any(|a| a.client_id == client_id && a.resource_id == resource_id);
                    if on_site && !listed {
                        let duration = policy
                            .duration_secs
                            .map_or(self.config.default_authorization, Duration::from_secs);
                        authorizations.push(Authorization {
                            client_id,
                            resource_id,
                            expires_at: now_unix.saturating_add(duration.as_secs()),
                        });
                    }
                }
                for a in &authorizations {
                    self.granted
                        .insert((a.client_id, a.resource_id), a.expires_at);
                }
                let init = GatewayIngress::Init(GatewayInit {
                    relays,
                    authorizations,
                });
                self.send(conn, &frame.topic, &init);
                // A flow announced while the gateway's previous socket was already dead (a
                // half-open TCP connection the portal had not noticed) never reached it, and
                // the init extends only authorizations the gateway has: announce every live
                // flow of this gateway again. A gateway that did get one keeps its connection
                // (the parameters are unchanged), so the repeat costs only candidates; its
                // answer gives the client the flow it may never have heard of either. A
                // restarted gateway (another process number, or another key) lost its flows
                // with its connections, and their clients still hold connections to the
                // previous process: they are told, and announcing the flows would only start
                // connections no client answers.
                let previous = self.gateway_keys.insert(gid, public_key);
                let new_process = payload.instance.is_some_and(|instance| {
                    self.gateway_instances
                        .insert(gid, instance)
                        .is_some_and(|p| p != instance)
                });
                if new_process || owned_before.is_some_and(|key| key != public_key) {
                    self.gateway_restarted(gid);
                    return;
                }
                if previous != Some(public_key) {
                    return;
                }
                let live: Vec<(ClientId, ResourceId)> = self
                    .flows
                    .iter()
                    .filter(|(_, f)| f.gateway == gid && f.expires_at > now_unix)
                    .map(|(pair, _)| *pair)
                    .collect();
                for (cid, rid) in live {
                    self.announce_flow(cid, gid, rid);
                }
            }
        }
    }

    /// A gateway joined as a new process (another process number or another key than
    /// before), which holds none of its predecessor's connections. The clients that may have one are told, so their next
    /// packet asks for a new connection instead of waiting for ICE to give up every pair of
    /// the dead one; and those connections start afresh (new preshared keys and ICE
    /// credentials). A connection made before this portal started is in no pair, so every
    /// client a policy lets reach the gateway's site is told too.
    fn gateway_restarted(&mut self, gid: GatewayId) {
        let site = self.dir.gateways.get(&gid).map(|g| g.site.clone());
        let on_site = |rid: &ResourceId| {
            self.dir
                .resources
                .get(rid)
                .is_some_and(|r| Some(&r.site) == site.as_ref())
        };
        let clients: BTreeSet<ClientId> = self
            .pairs
            .keys()
            .filter(|(_, g)| *g == gid)
            .map(|(c, _)| *c)
            .chain(
                self.dir
                    .policies
                    .keys()
                    .filter(|(_, rid)| on_site(rid))
                    .map(|(c, _)| *c),
            )
            .collect();
        self.pairs.retain(|(_, g), _| *g != gid);
        tracing::info!(%gid, clients = clients.len(), "Gateway restarted: its connections start afresh");
        let message = ClientIngress::GatewayRestarted(GatewayRestarted { gateway_id: gid });
        for cid in clients {
            self.push_client(cid, &message);
        }
    }

    fn handle_client(
        &mut self,
        conn: ConnId,
        cid: ClientId,
        frame: &Frame,
        message: ClientEgress,
        now: SystemTime,
    ) {
        match message {
            ClientEgress::RequestConnection(RequestConnection { resource_id }) => {
                match self.authorize(cid, resource_id, now) {
                    Ok(gid) => {
                        self.reply_ok(conn, frame, json!({"gateway_id": gid}));
                        self.announce_flow(cid, gid, resource_id);
                    }
                    Err(reason) => {
                        tracing::debug!(%cid, rid = %resource_id, reason, "Connection refused");
                        self.reply_error(conn, frame, reason);
                    }
                }
            }
            ClientEgress::IceCandidates(GatewayCandidates {
                gateway_id,
                candidates,
            }) => {
                let message = GatewayIngress::IceCandidates(ClientCandidates {
                    client_id: cid,
                    candidates: valid(candidates),
                });
                self.relay_to_gateway(conn, frame, cid, gateway_id, &message, now);
            }
            ClientEgress::InvalidateIceCandidates(GatewayCandidates {
                gateway_id,
                candidates,
            }) => {
                let message = GatewayIngress::InvalidateIceCandidates(ClientCandidates {
                    client_id: cid,
                    candidates: valid(candidates),
                });
                self.relay_to_gateway(conn, frame, cid, gateway_id, &message, now);
            }
        }
    }

    fn handle_gateway(
        &mut self,
        conn: ConnId,
        gid: GatewayId,
        frame: &Frame,
        message: GatewayEgress,
        now: SystemTime,
    ) {
        let (cid, message) = match message {
            GatewayEgress::FlowAccepted(FlowAccepted {
                client_id,
                resource_id,
                ice_ufrag,
            }) => {
                self.flow_accepted(gid, client_id, resource_id, &ice_ufrag);
                self.reply_ok(conn, frame, json!({}));
                return;
            }
            GatewayEgress::IceCandidates(ClientCandidates {
                client_id,
                candidates,
            }) => (
                client_id,
                ClientIngress::IceCandidates(GatewayCandidates {
                    gateway_id: gid,
                    candidates: valid(candidates),
                }),
            ),
            GatewayEgress::InvalidateIceCandidates(ClientCandidates {
                client_id,
                candidates,
            }) => (
                client_id,
                ClientIngress::InvalidateIceCandidates(GatewayCandidates {
                    gateway_id: gid,
                    candidates: valid(candidates),
                }),
            ),
        };
        if !self.has_flow(cid, gid, now) {
            tracing::debug!(%cid, %gid, "Dropping candidates for a pair without a flow");
            self.reply_error(conn, frame, "unauthorized");
            return;
        }
        let Some(client_conn) = self.joined_conn(Identity::Client(cid)) else {
            self.reply_error(conn, frame, "offline");
            return;
        };
        tracing::trace!(%cid, %gid, "Relaying candidates to the client");
        self.send_joined(client_conn, &message);
        self.reply_ok(conn, frame, json!({}));
    }

    fn relay_to_gateway(
        &mut self,
        conn: ConnId,
        frame: &Frame,
        cid: ClientId,
        gid: GatewayId,
        message: &GatewayIngress,
        now: SystemTime,
    ) {
        if !self.has_flow(cid, gid, now) {
            tracing::debug!(%cid, %gid, "Dropping candidates for a pair without a flow");
            self.reply_error(conn, frame, "unauthorized");
            return;
        }
        let Some(gateway_conn) = self.joined_conn(Identity::Gateway(gid)) else {
            self.reply_error(conn, frame, "offline");
            return;
        };
        tracing::trace!(%cid, %gid, "Relaying candidates to the gateway");
        self.send_joined(gateway_conn, message);
        self.reply_ok(conn, frame, json!({}));
    }

    /// Checks the policy and picks a gateway; records the flow. Errors are reply reasons.
    fn authorize(
        &mut self,
        cid: ClientId,
        rid: ResourceId,
        now: SystemTime,
    ) -> Result<GatewayId, &'static str> {
        // Unknown resources and forbidden ones look the same, so ids cannot be probed.
        let policy = *self.dir.policies.get(&(cid, rid)).ok_or("unauthorized")?;
        let site = self
            .dir
            .resources
            .get(&rid)
            .ok_or("unauthorized")?
            .site
            .clone();
        let candidates: Vec<GatewayId> = self
            .gateways_of_site(&site)
            .into_iter()
            .filter(|gid| self.is_joined(Identity::Gateway(*gid)))
            .collect();
        // Stick to a gateway the client already has a connection with.
        let sticky = candidates
            .iter()
            .copied()
            .find(|gid| self.pairs.contains_key(&(cid, *gid)));
        let gid = match sticky {
            Some(gid) => gid,
            None if candidates.is_empty() => return Err("offline"),
            None => candidates[self.rng.gen_range(0..candidates.len())],
        };
        let duration = policy
            .duration_secs
            .map_or(self.config.default_authorization, Duration::from_secs);
        let expires_at = unix(now).saturating_add(duration.as_secs());
        self.flows.insert(
            (cid, rid),
            Flow {
                gateway: gid,
                expires_at,
            },
        );
        self.granted.insert((cid, rid), expires_at);
        if !self.pairs.contains_key(&(cid, gid)) {
            let pair = self.new_pair();
            self.pairs.insert((cid, gid), pair);
        }
        tracing::info!(%cid, %gid, %rid, expires_at, "Flow authorized");
        Ok(gid)
    }

    /// The `authorize_flow` for a flow, if both nodes are joined and the flow is known.
    fn authorize_flow_message(
        &self,
        cid: ClientId,
        gid: GatewayId,
        rid: ResourceId,
    ) -> Option<GatewayIngress> {
        let client_key = self.public_key(Identity::Client(cid))?;
        let pair = self.pairs.get(&(cid, gid))?;
        let flow = self.flows.get(&(cid, rid))?;
        let client = self.dir.clients.get(&cid)?;
        let resource = self.dir.resources.get(&rid)?;
        Some(GatewayIngress::AuthorizeFlow(AuthorizeFlow {
            client: FlowClient {
                id: cid,
                public_key: client_key,
                ipv4: client.ipv4,
                ipv6: client.ipv6,
            },
            resource: resource.description(),
            client_ice: pair.client_ice.clone(),
            gateway_ice: pair.gateway_ice.clone(),
            preshared_key: pair.psk,
            expires_at: flow.expires_at,
        }))
    }

    /// Sends `authorize_flow` to the gateway; the client is told when the gateway accepts it
    /// (see [`Portal::flow_accepted`]).
    fn announce_flow(&mut self, cid: ClientId, gid: GatewayId, rid: ResourceId) {
        if let Some(authorize) = self.authorize_flow_message(cid, gid, rid) {
            self.push_gateway(gid, &authorize);
        }
    }

    /// The gateway holds the connection of the flow `(cid, rid)` with the parameters whose
    /// gateway ICE username fragment is `ufrag`: the client gets them now. Told before, a
    /// client would replace a working connection with parameters a gateway cut off from
    /// the portal never got, and lose its established flows until the gateway is back.
    fn flow_accepted(&mut self, gid: GatewayId, cid: ClientId, rid: ResourceId, ufrag: &str) {
        let current = self.flows.get(&(cid, rid)).filter(|f| f.gateway == gid);
        let pair = self
            .pairs
            .get(&(cid, gid))
            .filter(|p| p.gateway_ice.username == ufrag);
        let (Some(flow), Some(pair), Some(gateway_key)) =
            (current, pair, self.public_key(Identity::Gateway(gid)))
        else {
            tracing::debug!(%cid, %gid, %rid, "Stale flow acceptance: ignored");
            return;
        };
        let details = ClientIngress::FlowAuthorized(ConnectionDetails {
            resource_id: rid,
            gateway_id: gid,
            gateway_public_key: gateway_key,
            client_ice: pair.client_ice.clone(),
            gateway_ice: pair.gateway_ice.clone(),
            preshared_key: pair.psk,
            expires_at: flow.expires_at,
            gateway_instance: self.gateway_instances.get(&gid).copied(),
        });
        self.push_client(cid, &details);
    }

    fn new_pair(&mut self) -> Pair {
        let mut psk = [0u8; 32];
        self.rng.fill_bytes(&mut psk);
        let client_ice = self.ice_credentials();
        let gateway_ice = self.ice_credentials();
        Pair {
            psk: PresharedKey::from_bytes(psk),
            client_ice,
            gateway_ice,
        }
    }

    fn ice_credentials(&mut self) -> IceCredentials {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut s = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(CHARS[self.rng.gen_range(0..CHARS.len())]))
                .collect()
        };
        IceCredentials {
            username: s(8),
            password: s(24),
        }
    }

    /// Every relay, with fresh credentials for `identity`.
    fn relays_for(&self, identity: Identity, now: SystemTime) -> Vec<Relay> {
        self.dir
            .relays
            .values()
            .map(|r| self.relay_for(identity, r.id, r.address, now))
            .collect()
    }

    fn relay_for(
        &self,
        identity: Identity,
        id: RelayId,
        address: SocketAddr,
        now: SystemTime,
    ) -> Relay {
        let expires_at = unix(now).saturating_add(self.config.relay_credentials_lifetime.as_secs());
        let (username, password) =
            rest_credentials(&self.config.relay_secret, expires_at, &identity.to_string());
        Relay {
            id,
            address,
            username,
            password,
            expires_at,
        }
    }

    /// Whether candidates may pass between `cid` and `gid`: they have a live flow, or a policy
    /// lets the client reach something on the gateway's site. The second covers connections
    /// that outlived a portal restart (flows are not kept across one, tunnels are), which must
    /// still be able to migrate to new candidates.
    fn has_flow(&self, cid: ClientId, gid: GatewayId, now: SystemTime) -> bool {
        let now = unix(now);
        let flow = self
            .flows
            .iter()
            .any(|((c, _), f)| *c == cid && f.gateway == gid && f.expires_at > now);
        let site = self.dir.gateways.get(&gid).map(|g| &g.site);
        flow || self.dir.policies.keys().any(|(c, rid)| {
            *c == cid
                && self
                    .dir
                    .resources
                    .get(rid)
                    .is_some_and(|r| Some(&r.site) == site)
        })
    }

    fn end_flows_of_resource(&mut self, rid: ResourceId) {
        let ended: Vec<(ClientId, Flow)> = self
            .flows
            .iter()
            .filter(|((_, r), _)| *r == rid)
            .map(|(&(c, _), f)| (c, *f))
            .collect();
        for (cid, flow) in ended {
            self.flows.remove(&(cid, rid));
            let revoked = AccessRevoked {
                client_id: cid,
                resource_id: rid,
            };
            self.push_gateway(flow.gateway, &GatewayIngress::AccessRevoked(revoked));
        }
    }

    fn clients_with_policy(&self, rid: ResourceId) -> Vec<ClientId> {
        self.dir
            .policies
            .keys()
            .filter(|(_, r)| *r == rid)
            .map(|(c, _)| *c)
            .collect()
    }

    /// The process numbers of the gateways on the sites `cid` may reach something on.
    fn gateway_instances_for(&self, cid: ClientId) -> Vec<GatewayInstance> {
        let sites: BTreeSet<&str> = self
            .dir
            .policies
            .keys()
            .filter(|(c, _)| *c == cid)
            .filter_map(|(_, rid)| self.dir.resources.get(rid))
            .map(|r| r.site.as_str())
            .collect();
        self.dir
            .gateways
            .values()
            .filter(|g| sites.contains(g.site.as_str()))
            .filter_map(|g| {
                let instance = *self.gateway_instances.get(&g.id)?;
                Some(GatewayInstance {
                    gateway_id: g.id,
                    instance,
                })
            })
            .collect()
    }

    /// A client joined again as the same process: whatever the portal pushed while its
    /// previous socket was dead (its gateways' new candidates, above all) is lost, and a
    /// connection whose peer changed relays meanwhile is left with a stale view of it. One
    /// live flow per gateway it has a connection with is announced to that gateway again: the
    /// gateway keeps its connection (the parameters are unchanged) and signals its
    /// candidates again, and its acceptance makes the client do the same.
    fn reannounce_client_flows(&mut self, cid: ClientId, now_unix: u64) {
        let mut flows: BTreeMap<GatewayId, ResourceId> = BTreeMap::new();
        for (&(c, rid), flow) in &self.flows {
            if c == cid
                && flow.expires_at > now_unix
                && self.pairs.contains_key(&(cid, flow.gateway))
            {
                flows.entry(flow.gateway).or_insert(rid);
            }
        }
        for (gid, rid) in flows {
            self.announce_flow(cid, gid, rid);
        }
    }

    fn gateways_of_site(&self, site: &str) -> Vec<GatewayId> {
        self.dir
            .gateways
            .values()
            .filter(|g| g.site == site)
            .map(|g| g.id)
            .collect()
    }

    /// Another node that owns `key` (see [`Portal::key_owners`]) or whose joined session holds
    /// it. A node's own sessions do not count: it may join again with its key (a reconnect
    /// replaces its older socket anyway).
    fn key_holder(&self, key: PublicKey, identity: Identity) -> Option<Identity> {
        let owner = self.dir.key_owners.get(&key).copied();
        owner.filter(|o| *o != identity).or_else(|| {
            self.sessions
                .values()
                .filter(|s| s.identity != identity)
                .find(|s| s.joined.as_ref().is_some_and(|(_, k)| *k == key))
                .map(|s| s.identity)
        })
    }

    /// Makes `key` the one key `identity` owns, and records the change for the store.
    fn own_key(&mut self, identity: Identity, key: PublicKey) {
        if self.dir.key_owners.get(&key) == Some(&identity) {
            return;
        }
        let change = Change::OwnKey {
            public_key: key,
            node: identity,
        };
        if self.dir.apply(&change).is_ok() {
            self.recorded.push_back(change);
        }
    }

    /// The next change the core made to its directory by itself (a key's new owner), for the
    /// runtime to store: another instance, or the next start, must know it too.
    pub fn poll_recorded(&mut self) -> Option<Change> {
        self.recorded.pop_front()
    }

    /// Which node owns which public key: the state a restart must keep for keys to stay their
    /// owners' (part of [`Self::directory`]; the store keeps it, see [`Self::poll_recorded`]).
    pub fn key_owners(&self) -> Vec<(PublicKey, Identity)> {
        self.dir.key_owners.iter().map(|(&k, &i)| (k, i)).collect()
    }

    fn joined_conn(&self, identity: Identity) -> Option<ConnId> {
        let conn = *self.online.get(&identity)?;
        self.sessions.get(&conn)?.joined.as_ref()?;
        Some(conn)
    }

    fn joined_nodes(&self) -> Vec<(Identity, ConnId)> {
        self.online
            .iter()
            .filter(|(_, conn)| self.sessions.get(conn).is_some_and(|s| s.joined.is_some()))
            .map(|(&i, &c)| (i, c))
            .collect()
    }

    fn public_key(&self, identity: Identity) -> Option<PublicKey> {
        let conn = self.joined_conn(identity)?;
        self.sessions
            .get(&conn)?
            .joined
            .as_ref()
            .map(|(_, key)| *key)
    }

    fn push_presence(&mut self, conn: ConnId, identity: Identity, presence: RelaysPresence) {
        match identity {
            Identity::Client(_) => {
                self.send_joined(conn, &ClientIngress::RelaysPresence(presence));
            }
            Identity::Gateway(_) => {
                self.send_joined(conn, &GatewayIngress::RelaysPresence(presence));
            }
        }
    }

    fn push_client(&mut self, cid: ClientId, message: &ClientIngress) {
        if let Some(conn) = self.joined_conn(Identity::Client(cid)) {
            self.send_joined(conn, message);
        }
    }

    fn push_gateway(&mut self, gid: GatewayId, message: &GatewayIngress) {
        if let Some(conn) = self.joined_conn(Identity::Gateway(gid)) {
            self.send_joined(conn, message);
        }
    }

    /// Pushes on the room the socket joined.
    fn send_joined(&mut self, conn: ConnId, message: &impl Message) {
        let Some(topic) = self
            .sessions
            .get(&conn)
            .and_then(|s| s.joined.as_ref())
            .map(|(topic, _)| topic.clone())
        else {
            return;
        };
        self.send(conn, &topic, message);
    }

    fn send(&mut self, conn: ConnId, topic: &str, message: &impl Message) {
        match Frame::message(topic, message, None) {
            Ok(frame) => self.outputs.push_back(Output::Send {
                conn,
                text: frame.to_text(),
            }),
            Err(error) => tracing::warn!(%error, event = message.event(), "Cannot encode message"),
        }
    }

    fn reply_ok(&mut self, conn: ConnId, frame: &Frame, response: serde_json::Value) {
        if let Some(reference) = frame.reference {
            let text = Frame::reply_ok(&frame.topic, reference, response).to_text();
            self.outputs.push_back(Output::Send { conn, text });
        }
    }

    fn reply_error(&mut self, conn: ConnId, frame: &Frame, reason: &'static str) {
        *self.refused.entry(reason).or_default() += 1;
        if let Some(reference) = frame.reference {
            let text = Frame::reply_error(&frame.topic, reference, reason).to_text();
            self.outputs.push_back(Output::Send { conn, text });
        }
    }
}

/// `client`, or `client:<id>` with the node's own id (`client:3` or `client:c3`).
fn topic_matches(topic: &str, identity: Identity) -> bool {
    let (room, id) = match topic.split_once(':') {
        Some((room, id)) => (room, Some(id)),
        None => (topic, None),
    };
    room == identity.room()
        && id.is_none_or(|id| id == identity.id().to_string() || id == identity.to_string())
}

/// Keeps the strings that are valid candidates, as they were sent.
fn valid(candidates: Vec<String>) -> Vec<String> {
    candidates
        .into_iter()
        .filter(|c| match IceCandidate::parse(c) {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%error, candidate = %c, "Dropping malformed candidate");
                false
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
