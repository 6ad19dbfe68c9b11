//! The reference model: the abstract truth the simulated deployment is checked against.
//!
//! It knows who may reach what and which faults are active, and from that what must happen to
//! a packet a client sends: arrive exactly once (the path can carry it and the client is
//! authorized), never arrive (not authorized), or either (a fault is in the way). It knows
//! nothing about ICE, WireGuard or TURN.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// Clients in the world.
pub const CLIENTS: usize = 2;
/// Resources behind the gateway.
pub const RESOURCES: usize = 3;
/// The client that misbehaves in [`Transition::CandidateFlood`], [`Transition::HandshakeFlood`]
/// and [`Transition::ClaimKey`] (with valid credentials); the other stays honest.
pub const HOSTILE: usize = 1;
/// Relay hosts. The portal announces two of them at a time; the third stands by for
/// [`Transition::RelayReplace`].
pub const RELAYS: usize = 3;
/// Nodes with a portal connection that [`Transition::PortalPartition`] can cut: the clients,
/// then the gateway.
pub const NODES: usize = CLIENTS + 1;
/// Places where [`Transition::LossBurst`] can degrade links: the clients' NAT, the gateway's
/// NAT, then each relay.
pub const LINK_SITES: usize = 2 + RELAYS;

/// How long after the [`HOSTILE`] client misbehaved its own packets must arrive again. A
/// refused key claim or capped candidates leave its connection as it was. A handshake flood
/// goes from its own address, like its own initiations: for the second it lasts ([`FLOOD`])
/// the gateway's budget for that address is spent, and an initiation of its own dropped in it
/// goes again after WireGuard's `REKEY_TIMEOUT` (5 s, plus up to a third of a second of
/// jitter), by 6.4 s after the attack began; a packet sent 2 s after it waits for that session
/// at most 4.4 s, within [`ANSWER_WITHIN`]. (From another address, the gateway would answer
/// with a cookie, and the initiation would go again at once.)
pub const HOSTILE_RECOVERY: Duration = Duration::from_secs(2);

/// How long after a burst of loss ends traffic must flow again (a packet sent after it must
/// arrive within its send): ICE retries lost checks within seconds, and a lost WireGuard
/// handshake is sent again within 5 s, the packets held back behind it waiting.
pub const LOSS_RECOVERY: Duration = Duration::from_secs(3);

/// How long after a node's public address changed (a roam) the others' traffic must flow:
/// the gateway follows an authenticated peer to its new address, as WireGuard does.
pub const ADDRESS_CHANGE_RECOVERY: Duration = Duration::from_secs(2);

/// How long after a relay crashes traffic must flow again (over another pair): a path is given
/// up after 4 unanswered checks a second apart.
pub const PATH_FAILOVER: Duration = Duration::from_secs(5);

/// How long after a gateway or client restarts a new flow must work: the peer's connection to
/// the old process fails within seconds (its checks go unanswered), and what it held for it
/// goes on a new connection.
pub const RESTART_RECOVERY: Duration = Duration::from_secs(5);

/// How long after a connection starts, direct UDP is unblocked, or a fault's recovery bound
/// ends, its nominated path must be direct where the NATs allow one ([`Model::direct_possible`]):
/// ICE checks the better pairs that failed again every few seconds while data flows on a
/// relayed path, and nominates the best pair that works.
pub const DIRECT_WITHIN: Duration = Duration::from_secs(10);

/// How long after the portal withdrew a relay no node holds a relayed candidate on it, its own
/// or a peer's: the portal tells the nodes at once, they free their allocations on it and
/// signal the candidates' end to their peers.
pub const WITHDRAWN_RELAY_FORGOTTEN: Duration = Duration::from_secs(2);

/// How long after a relay died no node holds a relayed candidate on it: nobody tells the
/// nodes, they find out when its answers stop (an allocation's keep-alive every 25 s, a few
/// retransmissions), then signal the candidates' end to their peers.
pub const DEAD_RELAY_FORGOTTEN: Duration = Duration::from_secs(50);

/// How long the world runs before the first transition: nodes join the portal and allocate on
/// the relays.
pub const WARM_UP: Duration = Duration::from_secs(5);
/// How long a Send runs: enough for a new connection (request, ICE, handshake) to carry it.
pub const SEND_WINDOW: Duration = Duration::from_secs(20);
/// How long after it was sent a packet required to arrive has its echo back at the client at
/// the latest. A new connection (request, ICE, handshake) carries it within a second, and so
/// does a connection to a gateway that restarted, which the client fails when the portal says
/// so. The slow ones are connections whose path died while they idled (a NAT's mappings
/// flushed, a roam, a relay gone): the packet waits while the nominated pair is checked, and
/// goes on a pair that answers once the nominated one left the check at the wake unanswered
/// with the next in flight, or on a new connection; a peer that cannot be reached on any pair
/// is sent our candidates again and checks at once; a pair answered since the wake needs no
/// new check when ICE nominates it; after a wake, the pairs due go in the order of priority.
/// Measured up to 1.49 s over 2,000 seeds of `harness run --cases` and 1.26 s in the default
/// run; it was 13.8 s before the gateway kept the connections of idle clients and the client
/// moved to pairs that answer, and 2.88 s before the last three steps. The goal for a roam is
/// 2 s.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long the world runs after a fault or a policy change before the next transition.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long after its portal link is healed a node may take to be back in business, a new
/// flow included. A socket that carried anything during the cut is dead: the simulated TCP
/// loses what was sent into the cut and its stream never recovers (a real one retransmits, but
/// after a long cut it may take as long). Only a heartbeat notices it: the next one goes up to
/// 15 s after the heal and is given up 5 s later (`node_core::portal::HEARTBEAT_INTERVAL`,
/// `HEARTBEAT_TIMEOUT`), then the node reconnects within the first backoff (0.5 s: it starts
/// over after a connection that worked), connects, joins, and the new flow takes its 3 s:
/// 24 s. A node whose link was already given up during the cut retries at most 10 s apart,
/// which is sooner.
pub const PORTAL_REJOIN: Duration = Duration::from_secs(25);

/// The NAT in front of the clients or the one in front of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The clients' NAT.
    Clients,
    /// The gateway's NAT.
    Gateway,
}

/// One step of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// A client sends a UDP datagram to a resource; the resource echoes it.
    Send {
        /// Which client.
        client: usize,
        /// Which resource.
        resource: usize,
    },
    /// Simulated time passes with no traffic (past the idle threshold, past expiries).
    Advance {
        /// How long.
        secs: u64,
    },
    /// The portal restarts: every socket drops, every preshared key is new.
    PortalRestart,
    /// A NAT forgets all its mappings; the next inside host to send gets the lowest free
    /// port, which another inside host may just have had.
    NatExpiry(Side),
    /// A relay crashes.
    RelayCrash(usize),
    /// A crashed relay comes back (with no allocations).
    RelayRestart(usize),
    /// Direct UDP between the two NATs is blocked: only relays can carry traffic.
    BlockDirect,
    /// Direct UDP between the NATs works again.
    UnblockDirect,
    /// The portal revokes a client's access to a resource.
    Revoke {
        /// Which client.
        client: usize,
        /// Which resource.
        resource: usize,
    },
    /// The portal grants a client access to a resource.
    Authorize {
        /// Which client.
        client: usize,
        /// Which resource.
        resource: usize,
    },
    /// The gateway restarts and loses all its state.
    GatewayRestart,
    /// A client restarts and loses all its state.
    ClientRestart(usize),
    /// A client sends a TCP segment to a resource; the resource echoes its payload.
    SendTcp {
        /// Which client.
        client: usize,
        /// Which resource.
        resource: usize,
    },
    /// A client pings a resource (ICMP echo request); the resource replies.
    Ping {
        /// Which client.
        client: usize,
        /// Which resource.
        resource: usize,
    },
    /// The links of some places (bit `i` of `sites` is site `i`, see [`LINK_SITES`])
    /// duplicate and reorder datagrams for a [`SEND_WINDOW`], then lose them too for `secs`; every client sends a probe to every resource as the burst starts, held
    /// to what the model expects then.
    LossBurst {
        /// Which places, as a bit set.
        sites: u8,
        /// How long.
        secs: u64,
    },
    /// The portal's TCP to one node (clients first, then the gateway) is cut for `secs`.
    PortalPartition {
        /// Which node, see [`NODES`].
        node: usize,
        /// How long until the cut heals.
        secs: u64,
    },
    /// A client's NAT binding changes under it: its socket is rebound to a new inside port,
    /// so it appears from a new public port, with its keys and connections kept.
    Roam(usize),
    /// The portal announces the standby relay and withdraws this one.
    RelayReplace(usize),
    /// The portal grants a client access to a resource through a policy whose
    /// authorizations last `secs`: each connection request starts one, the gateway ends it.
    AuthorizeFor {
        /// Which client.
        client: usize,
        /// Which resource.
        resource: usize,
        /// How long each authorization lasts.
        secs: u64,
    },
    /// The [`HOSTILE`] client's portal session signals thousands of bogus candidates for its
    /// connection to the gateway.
    CandidateFlood,
    /// The [`HOSTILE`] client floods the gateway with handshake initiations that carry a valid
    /// mac1, from its own socket, for a second.
    HandshakeFlood,
    /// The [`HOSTILE`] client joins its portal topic again, with the other client's public
    /// key: were the portal to take it, the gateway would hand that client's handshakes to it.
    ClaimKey,
    /// An administrator removes a resource at the portal, while traffic flows: its policies go
    /// with it, and nobody may reach it any more.
    RemoveResource(usize),
    /// The [`HOSTILE`] client sends a UDP datagram to a resource with the other client's tunnel
    /// address as its source, as anyone can on their own machine: the gateway must drop it,
    /// whatever the resource, so that nothing arrives and no answer reaches the other client.
    Spoof(usize),
    /// An administrator puts a removed resource back; no policy lets anyone reach it until one
    /// is granted again.
    AddResource(usize),
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind())?;
        match self {
            Self::Send { client, resource }
            | Self::SendTcp { client, resource }
            | Self::Ping { client, resource }
            | Self::Revoke { client, resource }
            | Self::Authorize { client, resource } => {
                write!(f, "(c{}, r{})", client + 1, resource + 1)
            }
            Self::Advance { secs } => write!(f, "({secs}s)"),
            Self::NatExpiry(side) => write!(f, "({side:?})"),
            Self::RelayCrash(r) | Self::RelayRestart(r) => write!(f, "(t{})", r + 1),
            Self::ClientRestart(c) | Self::Roam(c) => write!(f, "(c{})", c + 1),
            Self::RelayReplace(r) => write!(f, "(t{})", r + 1),
            Self::RemoveResource(r) | Self::AddResource(r) | Self::Spoof(r) => {
                write!(f, "(r{})", r + 1)
            }
            Self::LossBurst { sites, secs } => write!(f, "({sites:#b}, {secs}s)"),
            Self::PortalPartition { node, secs } => write!(f, "({}, {secs}s)", node_name(*node)),
            Self::AuthorizeFor {
                client,
                resource,
                secs,
            } => write!(f, "(c{}, r{}, {secs}s)", client + 1, resource + 1),
            Self::PortalRestart
            | Self::BlockDirect
            | Self::UnblockDirect
            | Self::GatewayRestart
            | Self::CandidateFlood
            | Self::HandshakeFlood
            | Self::ClaimKey => Ok(()),
        }
    }
}

impl Transition {
    /// The name counted in the coverage line.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Send { .. } => "send",
            Self::Advance { .. } => "advance_time",
            Self::PortalRestart => "portal_restart",
            Self::NatExpiry(_) => "nat_port_reuse",
            Self::RelayCrash(_) => "relay_crash",
            Self::RelayRestart(_) => "relay_restart",
            Self::BlockDirect => "block_direct",
            Self::UnblockDirect => "unblock_direct",
            Self::Revoke { .. } => "revoke",
            Self::Authorize { .. } => "authorize",
            Self::GatewayRestart => "gateway_restart",
            Self::ClientRestart(_) => "client_restart",
            Self::SendTcp { .. } => "send_tcp",
            Self::Ping { .. } => "ping",
            Self::LossBurst { .. } => "loss_burst",
            Self::PortalPartition { .. } => "portal_partition",
            Self::Roam(_) => "roam",
            Self::RelayReplace(_) => "relay_replace",
            Self::AuthorizeFor { .. } => "authorize_expiring",
            Self::CandidateFlood => "candidate_flood",
            Self::HandshakeFlood => "handshake_flood",
            Self::ClaimKey => "claim_key",
            Self::RemoveResource(_) => "remove_resource",
            Self::AddResource(_) => "add_resource",
            Self::Spoof(_) => "spoof",
        }
    }

    /// How long the world runs for this transition.
    pub fn duration(&self) -> Duration {
        match self {
            Self::Send { .. } | Self::SendTcp { .. } | Self::Ping { .. } | Self::Spoof(_) => {
                SEND_WINDOW
            }
            Self::Advance { secs } => Duration::from_secs(*secs),
            Self::LossBurst { secs, .. } => SEND_WINDOW + Duration::from_secs(*secs) + SETTLE,
            Self::HandshakeFlood => FLOOD + SETTLE,
            Self::PortalRestart
            | Self::NatExpiry(_)
            | Self::RelayCrash(_)
            | Self::RelayRestart(_)
            | Self::BlockDirect
            | Self::UnblockDirect
            | Self::Revoke { .. }
            | Self::Authorize { .. }
            | Self::GatewayRestart
            | Self::ClientRestart(_)
            | Self::PortalPartition { .. }
            | Self::Roam(_)
            | Self::RelayReplace(_)
            | Self::AuthorizeFor { .. }
            | Self::CandidateFlood
            | Self::ClaimKey
            | Self::RemoveResource(_)
            | Self::AddResource(_) => SETTLE,
        }
    }

    /// Every kind, for the coverage check.
    pub const KINDS: [&'static str; 25] = [
        "send",
        "advance_time",
        "portal_restart",
        "nat_port_reuse",
        "relay_crash",
        "relay_restart",
        "block_direct",
        "unblock_direct",
        "revoke",
        "authorize",
        "gateway_restart",
        "client_restart",
        "send_tcp",
        "ping",
        "loss_burst",
        "portal_partition",
        "roam",
        "relay_replace",
        "authorize_expiring",
        "candidate_flood",
        "handshake_flood",
        "claim_key",
        "remove_resource",
        "add_resource",
        "spoof",
    ];

    /// The probe this transition sends, if it is one: (client, resource, protocol).
    pub fn probe(&self) -> Option<(usize, usize, Proto)> {
        match self {
            Self::Send { client, resource } => Some((*client, *resource, Proto::Udp)),
            Self::SendTcp { client, resource } => Some((*client, *resource, Proto::Tcp)),
            Self::Ping { client, resource } => Some((*client, *resource, Proto::Icmp)),
            Self::Advance { .. }
            | Self::PortalRestart
            | Self::NatExpiry(_)
            | Self::RelayCrash(_)
            | Self::RelayRestart(_)
            | Self::BlockDirect
            | Self::UnblockDirect
            | Self::Revoke { .. }
            | Self::Authorize { .. }
            | Self::GatewayRestart
            | Self::ClientRestart(_)
            | Self::LossBurst { .. }
            | Self::PortalPartition { .. }
            | Self::Roam(_)
            | Self::RelayReplace(_)
            | Self::AuthorizeFor { .. }
            | Self::CandidateFlood
            | Self::HandshakeFlood
            | Self::ClaimKey
            | Self::RemoveResource(_)
            | Self::AddResource(_)
            | Self::Spoof(_) => None,
        }
    }
}

/// What a probe is carried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// A UDP datagram, echoed.
    Udp,
    /// A TCP segment, its payload echoed in a segment back.
    Tcp,
    /// An ICMP echo request, replied to.
    Icmp,
}

/// `c1`, `c2`, ..., then `g1`.
pub fn node_name(node: usize) -> String {
    if node < CLIENTS {
        format!("c{}", node + 1)
    } else {
        "g1".to_owned()
    }
}

/// A pair whose authorizations expire (and are renewed by the client while the policy stands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiring {
    /// How long one authorization lasts.
    pub lasts: Duration,
}

/// How long [`Transition::HandshakeFlood`] lasts.
pub const FLOOD: Duration = Duration::from_secs(1);

/// What must happen to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Arrives exactly once, unchanged, and its echo comes back.
    Delivered,
    /// Never reaches the resource.
    Refused,
    /// Either: a fault is in the way or its recovery bound has not passed.
    Uncertain,
}

/// The abstract state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// (client, resource) pairs the portal authorizes.
    pub authorized: BTreeSet<(usize, usize)>,
    /// Resources an administrator removed (and has not put back).
    pub removed_resources: BTreeSet<usize>,
    /// Relays that are running.
    pub relays_up: [bool; RELAYS],
    /// Relays the portal announces to the nodes.
    pub relays_announced: [bool; RELAYS],
    /// When each relay that is down crashed.
    pub relay_down_at: [Option<Duration>; RELAYS],
    /// When each relay the portal stopped announcing was withdrawn (the standby never was).
    pub relay_withdrawn_at: [Option<Duration>; RELAYS],
    /// Until when each node's portal link is cut (see [`NODES`]), for cuts not yet over.
    pub portal_cut_until: [Option<Duration>; NODES],
    /// (client, resource) pairs whose last packet was required to arrive and did, with no
    /// disruption since: the tunnel and the route are up, so packets must keep flowing even
    /// while the portal is out of reach. Kept by the driver, which sees the outcomes.
    pub established: BTreeSet<(usize, usize)>,
    /// Pairs authorized by a policy whose authorizations expire (see
    /// [`Transition::AuthorizeFor`]), with how long they last and the latest moment one may
    /// have started or been extended.
    pub expiring: BTreeMap<(usize, usize), Expiring>,
    /// Pairs of the [`HOSTILE`] client revoked (or whose resource was removed) since it last
    /// started: it keeps its route, so it never asks for a new authorization when access is
    /// granted again, and the gateway refuses it (see
    /// `ClientState::ignoring_revocations`): its own doing.
    pub disobeyed: BTreeSet<(usize, usize)>,
    /// Pairs of the [`HOSTILE`] client revoked while the gateway's portal link was cut, with
    /// when the gateway is back to hear it: the client kept its route, and until then nothing
    /// tells the gateway.
    pub revocation_pending: BTreeMap<(usize, usize), Duration>,
    /// When the [`HOSTILE`] client last misbehaved: its own connection may suffer from what it
    /// did (the other client's must not).
    pub hostile_at: Option<Duration>,
    /// Whether direct UDP between the NATs is blocked.
    pub direct_blocked: bool,
    /// Whether the two NATs' behaviours let hole punching open a direct path (RFC 4787; set
    /// by the driver from the world's NATs, see `NatTypes::direct_possible`).
    pub direct_possible: bool,
    /// When direct UDP was last unblocked.
    pub unblocked_at: Option<Duration>,
    /// Simulated time at the start of the next transition.
    pub now: Duration,
    /// From when packets are required to arrive again after the faults so far (restart,
    /// expiry, crash, block...), if there was one: each fault moves it to its own recovery
    /// bound after it, never earlier.
    pub recovered_at: Option<Duration>,
    /// The kind of the transition that set [`Model::recovered_at`] (see [`Transition::kind`]).
    pub recovering_from: &'static str,
    /// When that fault happened (a loss burst: when it ended), which its bound counts from.
    pub recovering_since: Option<Duration>,
    /// Decides the world: NAT types, keys, every random choice.
    pub seed: u64,
}

impl Model {
    /// The world as the seed file describes it: client 1 may reach resources 1 and 2, client 2
    /// resources 2 and 3.
    pub fn initial(seed: u64) -> Self {
        Self {
            authorized: [(0, 0), (0, 1), (1, 1), (1, 2)].into_iter().collect(),
            removed_resources: BTreeSet::new(),
            relays_up: [true; RELAYS],
            relays_announced: [true, true, false],
            relay_down_at: [None; RELAYS],
            relay_withdrawn_at: [None; RELAYS],
            portal_cut_until: [None; NODES],
            established: BTreeSet::new(),
            expiring: BTreeMap::new(),
            disobeyed: BTreeSet::new(),
            revocation_pending: BTreeMap::new(),
            hostile_at: None,
            direct_blocked: false,
            direct_possible: false,
            unblocked_at: None,
            now: WARM_UP,
            recovered_at: None,
            recovering_from: "",
            recovering_since: None,
            seed,
        }
    }

    /// Whether an announced relay is up: the nodes' only STUN servers (their public addresses,
    /// the server-reflexive candidates, come from the relays) and their relayed candidates.
    pub fn relay_available(&self) -> bool {
        (0..RELAYS).any(|r| self.relays_up[r] && self.relays_announced[r])
    }

    /// Whether some path between a client and the gateway exists at all.
    pub fn path_exists(&self) -> bool {
        !self.direct_blocked || self.relay_available()
    }

    /// Whether a node's portal link is cut at `at`, or healed too recently for it to be back.
    pub fn portal_unreachable(&self, node: usize, at: Duration) -> bool {
        self.portal_cut_until[node].is_some_and(|until| at < until + PORTAL_REJOIN)
    }

    /// What must happen to a packet from `client` to `resource` sent at `at`.
    ///
    /// A pair whose authorizations expire is served as long as its policy stands: the client
    /// asks for a new authorization when the last one is about to end (while it is used) or
    /// has ended (after a pause, holding the packet back meanwhile). Any packet of the pair may
    /// so need the portal, as a new connection does.
    pub fn expect(&self, client: usize, resource: usize, at: Duration) -> Expect {
        let renews = self.expiring.contains_key(&(client, resource));
        self.expect_served(client, resource, at, renews)
    }

    /// [`Model::expect`] as if every authorization lasted forever.
    pub fn expect_unlimited(&self, client: usize, resource: usize, at: Duration) -> Expect {
        self.expect_served(client, resource, at, false)
    }

    /// [`Model::expect`], with `renews` saying whether the packet may need a new authorization
    /// from the portal.
    fn expect_served(&self, client: usize, resource: usize, at: Duration, renews: bool) -> Expect {
        match self.doubt(client, resource, at, renews) {
            Ok(expect) => expect,
            Err(_) => Expect::Uncertain,
        }
    }

    /// Why a packet from `client` to `resource` sent at `at` may be lost, if it may: the
    /// reason an [`Expect::Uncertain`] is uncertain, for the coverage line.
    pub fn uncertain_because(&self, client: usize, resource: usize, at: Duration) -> Option<&str> {
        let renews = self.expiring.contains_key(&(client, resource));
        self.doubt(client, resource, at, renews).err()
    }

    /// [`Model::expect_served`], with the reason for the doubt as the error.
    fn doubt(
        &self,
        client: usize,
        resource: usize,
        at: Duration,
        renews: bool,
    ) -> Result<Expect, &str> {
        if self
            .revocation_pending
            .get(&(client, resource))
            .is_some_and(|until| at < *until)
        {
            return Err("revocation_pending");
        }
        if !self.authorized.contains(&(client, resource)) {
            return Ok(Expect::Refused);
        }
        if self.disobeyed.contains(&(client, resource)) {
            return Err("disobeyed");
        }
        if !self.path_exists() {
            return Err("no_path");
        }
        if self.recovered_at.is_some_and(|t| at < t) {
            return Err(self.recovering_from);
        }
        // A new connection (or authorization) needs the portal on both ends; an established
        // one needs neither.
        let needs_portal = renews || !self.established.contains(&(client, resource));
        // And a relay: both ends are behind NATs, and without a STUN server neither learns the
        // public address the other must reach it on (host candidates are private).
        if needs_portal && !self.relay_available() {
            return Err("no_relay");
        }
        let cut = self.portal_unreachable(client, at) || self.portal_unreachable(CLIENTS, at);
        if needs_portal && cut {
            return Err("portal_cut");
        }
        if client == HOSTILE && self.hostile_at.is_some_and(|t| at < t + HOSTILE_RECOVERY) {
            return Err("hostile");
        }
        Ok(Expect::Delivered)
    }

    /// How long after the fault (or its end, or the portal link's heal) behind `reason` a packet
    /// sent at `at` went, for a reason [`Model::uncertain_because`] gave; `None` if it went
    /// before (into the fault itself) or the reason is not a fault's bound.
    pub fn after_fault(&self, reason: &str, client: usize, at: Duration) -> Option<Duration> {
        let since = match reason {
            "hostile" => self.hostile_at,
            "portal_cut" => [client, CLIENTS]
                .into_iter()
                .filter(|n| self.portal_unreachable(*n, at))
                .filter_map(|n| self.portal_cut_until[n])
                .max(),
            _ if reason == self.recovering_from => self.recovering_since,
            _ => None,
        };
        at.checked_sub(since?)
    }

    /// Whether the path of a packet sent at `sent` that was required to arrive must be direct
    /// when checked at `at`: the NATs allow one, direct UDP is not blocked, and
    /// [`DIRECT_WITHIN`] has passed since the packet (which may have started the connection),
    /// since direct UDP was unblocked and since the last fault's recovery bound.
    pub fn must_be_direct(&self, sent: Duration, at: Duration) -> bool {
        let since = [Some(sent), self.unblocked_at, self.recovered_at]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(sent);
        self.direct_possible && !self.direct_blocked && at >= since + DIRECT_WITHIN
    }

    /// The relays whose relayed candidates no node may hold at `at`: withdrawn or dead for
    /// their bound, with every node's portal link up since (the candidates' end is signalled
    /// through the portal).
    pub fn relays_to_be_forgotten(&self, at: Duration) -> Vec<usize> {
        if (0..NODES).any(|n| self.portal_cut_until[n].is_some()) {
            return Vec::new();
        }
        (0..RELAYS)
            .filter(|r| {
                let withdrawn = self.relay_withdrawn_at[*r]
                    .is_some_and(|t| at >= t + WITHDRAWN_RELAY_FORGOTTEN);
                let dead = self.relay_down_at[*r].is_some_and(|t| at >= t + DEAD_RELAY_FORGOTTEN);
                withdrawn || dead
            })
            .collect()
    }

    /// Records that a packet from `client` to `resource` was required to arrive and did.
    pub fn note_delivered(&mut self, client: usize, resource: usize) {
        self.established.insert((client, resource));
    }

    /// The state after `t`; every transition runs the world for [`Transition::duration`].
    pub fn apply(&mut self, t: &Transition) {
        // Packets are not required to arrive until `bound` after now (or a later moment an
        // earlier fault set); connections may have to be set up anew.
        let kind = t.kind();
        let disrupt_for = |m: &mut Self, heals_in: Duration, bound: Duration| {
            let since = m.now + heals_in;
            let until = since + bound;
            if m.recovered_at.is_none_or(|r| until > r) {
                m.recovered_at = Some(until);
                m.recovering_from = kind;
                m.recovering_since = Some(since);
            }
            m.established.clear();
        };
        for until in &mut self.portal_cut_until {
            if until.is_some_and(|u| self.now >= u + PORTAL_REJOIN) {
                *until = None;
            }
        }
        match t {
            // A portal restart rotates the preshared keys but leaves established tunnels alone,
            // and nodes rejoin within a backoff: new connections must work right after it.
            Transition::Send { .. }
            | Transition::SendTcp { .. }
            | Transition::Ping { .. }
            | Transition::Advance { .. }
            | Transition::PortalRestart
            | Transition::Spoof(_) => {}
            // The portal refuses a policy for a resource that is gone: nothing changes.
            Transition::Authorize { resource, .. } | Transition::AuthorizeFor { resource, .. }
                if self.removed_resources.contains(resource) => {}
            Transition::AuthorizeFor {
                client,
                resource,
                secs,
            } => {
                self.authorized.insert((*client, *resource));
                self.expiring.insert(
                    (*client, *resource),
                    Expiring {
                        lasts: Duration::from_secs(*secs),
                    },
                );
            }
            // These break paths silently: the nodes find out through failed checks, and a
            // packet for a path in doubt (idle, or with no working pair) waits for one that
            // answers, or for the next connection. A roaming client's peer keeps sending to
            // the old address until ICE finds the new one; a replaced relay takes its
            // allocations, and the relayed paths on them, along. After a restart the peer's
            // connection to the old process fails and what it held goes on a new one.
            // The clients' public addresses change: the gateway follows their authenticated
            // packets. The gateway's changes: nothing tells the clients where it went, so ICE
            // finds it as it finds any dead path.
            Transition::NatExpiry(Side::Clients) => {
                disrupt_for(self, Duration::ZERO, ADDRESS_CHANGE_RECOVERY);
            }
            Transition::NatExpiry(Side::Gateway) => {
                disrupt_for(self, Duration::ZERO, PATH_FAILOVER);
            }
            Transition::GatewayRestart | Transition::ClientRestart(_) => {
                disrupt_for(self, Duration::ZERO, RESTART_RECOVERY);
                if *t == Transition::ClientRestart(HOSTILE) {
                    self.disobeyed.clear();
                    self.revocation_pending.clear();
                }
            }
            // The gateway follows the roaming client's authenticated packets to its new
            // address; an idle client checks its path before its next packet goes.
            Transition::Roam(_) => disrupt_for(self, Duration::ZERO, ADDRESS_CHANGE_RECOVERY),
            Transition::RelayReplace(r) => {
                if let Some(standby) = (0..RELAYS).find(|s| !self.relays_announced[*s]) {
                    self.relays_announced[standby] = true;
                    self.relay_withdrawn_at[standby] = None;
                }
                self.relays_announced[*r] = false;
                self.relay_withdrawn_at[*r] = Some(self.now);
                // As a crash of the relayed paths on it. The nodes free their allocations on
                // it, so the NAT mappings towards it expire later and may take the
                // server-reflexive addresses it taught along: a path on one is then as dead as
                // any other, and a packet for it waits for the next path.
                disrupt_for(self, Duration::ZERO, PATH_FAILOVER);
            }
            // Lost checks and handshakes may fail connections: recovery counts from the end
            // of the burst. Its losses start after a send window of copies and reordering
            // alone, which break nothing.
            Transition::LossBurst { secs, .. } => {
                disrupt_for(
                    self,
                    SEND_WINDOW + Duration::from_secs(*secs),
                    LOSS_RECOVERY,
                );
            }
            Transition::PortalPartition { node, secs } => {
                self.portal_cut_until[*node] = Some(self.now + Duration::from_secs(*secs));
            }
            // ICE gives up a dead path within seconds on an active connection, and an idle one
            // checks fast again with its next packet: traffic moves to a working pair.
            Transition::RelayCrash(r) => {
                self.relays_up[*r] = false;
                self.relay_down_at[*r] = Some(self.now);
                disrupt_for(self, Duration::ZERO, PATH_FAILOVER);
            }
            Transition::RelayRestart(r) => {
                self.relays_up[*r] = true;
                self.relay_down_at[*r] = None;
            }
            // Disruptions for the hostile client alone.
            Transition::CandidateFlood | Transition::HandshakeFlood | Transition::ClaimKey => {
                self.hostile_at = Some(self.now);
                self.established.retain(|(client, _)| *client != HOSTILE);
            }
            // As a crash of the direct path: an active connection moves to a relayed pair, an
            // idle one checks its path before its next packet goes.
            Transition::BlockDirect => {
                self.direct_blocked = true;
                disrupt_for(self, Duration::ZERO, PATH_FAILOVER);
            }
            Transition::UnblockDirect => {
                self.direct_blocked = false;
                self.unblocked_at = Some(self.now);
            }
            Transition::Revoke { client, resource } => {
                if *client == HOSTILE {
                    self.disobey((*client, *resource));
                }
                self.authorized.remove(&(*client, *resource));
                self.established.remove(&(*client, *resource));
                self.expiring.remove(&(*client, *resource));
            }
            Transition::Authorize { client, resource } => {
                self.authorized.insert((*client, *resource));
                self.expiring.remove(&(*client, *resource));
            }
            // As a revocation of every client's access to it.
            Transition::RemoveResource(resource) => {
                self.disobey((HOSTILE, *resource));
                for client in 0..CLIENTS {
                    self.authorized.remove(&(client, *resource));
                    self.established.remove(&(client, *resource));
                    self.expiring.remove(&(client, *resource));
                }
                self.removed_resources.insert(*resource);
            }
            Transition::AddResource(resource) => {
                self.removed_resources.remove(resource);
            }
        }
        self.now += t.duration();
    }

    /// The [`HOSTILE`] client's `pair` is revoked: it keeps its route, so only the gateway
    /// refuses it, once it hears of it.
    fn disobey(&mut self, pair: (usize, usize)) {
        self.disobeyed.insert(pair);
        if let Some(until) = self.portal_cut_until[CLIENTS] {
            self.revocation_pending.insert(pair, until + PORTAL_REJOIN);
        }
    }

    /// Whether `t` makes sense now (a restart of a relay that runs does not).
    pub fn allows(&self, t: &Transition) -> bool {
        match t {
            Transition::RelayCrash(r) => self.relays_up[*r],
            Transition::RelayRestart(r) => !self.relays_up[*r],
            Transition::BlockDirect => !self.direct_blocked,
            Transition::UnblockDirect => self.direct_blocked,
            Transition::RelayReplace(r) => self.relays_announced[*r],
            Transition::RemoveResource(r) => !self.removed_resources.contains(r),
            Transition::AddResource(r) => self.removed_resources.contains(r),
            Transition::LossBurst { sites, .. } => {
                *sites != 0 && usize::from(*sites) < 1 << LINK_SITES
            }
            // One cut per node at a time, and only once it is over, rejoin included.
            Transition::PortalPartition { node, .. } => {
                *node < NODES && self.portal_cut_until[*node].is_none()
            }
            Transition::Revoke { client, resource } => {
                self.authorized.contains(&(*client, *resource))
            }
            Transition::Authorize { client, resource }
            | Transition::AuthorizeFor {
                client, resource, ..
            } => !self.authorized.contains(&(*client, *resource)),
            Transition::Send { .. }
            | Transition::Advance { .. }
            | Transition::PortalRestart
            | Transition::NatExpiry(_)
            | Transition::GatewayRestart
            | Transition::ClientRestart(_)
            | Transition::SendTcp { .. }
            | Transition::Ping { .. }
            | Transition::Roam(_)
            | Transition::CandidateFlood
            | Transition::HandshakeFlood
            | Transition::ClaimKey
            | Transition::Spoof(_) => true,
        }
    }
}
