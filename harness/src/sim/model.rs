//! The reference model: the abstract truth the simulated deployment is checked against.
//!
//! It knows who may reach what and which faults are active, and from that what must happen to
//! a packet a client sends: arrive exactly once (the path can carry it and the client is
//! authorized), never arrive (not authorized), or either (a fault is in the way). It knows
//! nothing about ICE, WireGuard or TURN.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// Clients in the world.
pub const CLIENTS: usize = 2;
/// Resources behind the gateway.
pub const RESOURCES: usize = 3;
/// Relays.
pub const RELAYS: usize = 2;

/// How long after the last fault was healed a connection may take to work again: ICE's
/// consent checks on an idle connection (~70 s), the migration grace, a new connection request
/// (10 s timeout), ICE setup and the WireGuard handshake. Packets sent within this bound after
/// a fault are not required to arrive; packets sent after it are.
pub const RECOVERY: Duration = Duration::from_secs(150);

/// How long the world runs before the first transition: nodes join the portal and allocate on
/// the relays.
pub const WARM_UP: Duration = Duration::from_secs(5);
/// How long a Send runs: enough for a new connection (request, ICE, handshake) to carry it.
pub const SEND_WINDOW: Duration = Duration::from_secs(20);
/// How long the world runs after a fault or a policy change before the next transition.
pub const SETTLE: Duration = Duration::from_secs(2);

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
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind())?;
        match self {
            Self::Send { client, resource }
            | Self::Revoke { client, resource }
            | Self::Authorize { client, resource } => {
                write!(f, "(c{}, r{})", client + 1, resource + 1)
            }
            Self::Advance { secs } => write!(f, "({secs}s)"),
            Self::NatExpiry(side) => write!(f, "({side:?})"),
            Self::RelayCrash(r) | Self::RelayRestart(r) => write!(f, "(t{})", r + 1),
            Self::ClientRestart(c) => write!(f, "(c{})", c + 1),
            Self::PortalRestart
            | Self::BlockDirect
            | Self::UnblockDirect
            | Self::GatewayRestart => Ok(()),
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
        }
    }

    /// How long the world runs for this transition.
    pub fn duration(&self) -> Duration {
        match self {
            Self::Send { .. } => SEND_WINDOW,
            Self::Advance { secs } => Duration::from_secs(*secs),
            Self::PortalRestart
            | Self::NatExpiry(_)
            | Self::RelayCrash(_)
            | Self::RelayRestart(_)
            | Self::BlockDirect
            | Self::UnblockDirect
            | Self::Revoke { .. }
            | Self::Authorize { .. }
            | Self::GatewayRestart
            | Self::ClientRestart(_) => SETTLE,
        }
    }

    /// Every kind, for the coverage check.
    pub const KINDS: [&'static str; 12] = [
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
    ];
}

/// What must happen to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Arrives exactly once, unchanged, and its echo comes back.
    Delivered,
    /// Never reaches the resource.
    Refused,
    /// Either: a fault is in the way or recovery is still within [`RECOVERY`].
    Uncertain,
}

/// The abstract state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// (client, resource) pairs the portal authorizes.
    pub authorized: BTreeSet<(usize, usize)>,
    /// Relays that are running.
    pub relays_up: [bool; RELAYS],
    /// Whether direct UDP between the NATs is blocked.
    pub direct_blocked: bool,
    /// Simulated time at the start of the next transition.
    pub now: Duration,
    /// When the last disruptive event happened (restart, expiry, crash, block...), if any.
    pub last_disruption: Option<Duration>,
    /// Decides the world: NAT types, keys, every random choice.
    pub seed: u64,
}

impl Model {
    /// The world as the seed file describes it: client 1 may reach resources 1 and 2, client 2
    /// resources 2 and 3.
    pub fn initial(seed: u64) -> Self {
        Self {
            authorized: [(0, 0), (0, 1), (1, 1), (1, 2)].into_iter().collect(),
            relays_up: [true; RELAYS],
            direct_blocked: false,
            now: WARM_UP,
            last_disruption: None,
            seed,
        }
    }

    /// Whether some path between a client and the gateway exists at all.
    pub fn path_exists(&self) -> bool {
        !self.direct_blocked || self.relays_up.iter().any(|up| *up)
    }

    /// What must happen to a packet from `client` to `resource` sent at `at`.
    pub fn expect(&self, client: usize, resource: usize, at: Duration) -> Expect {
        if !self.authorized.contains(&(client, resource)) {
            return Expect::Refused;
        }
        let recovered = self.last_disruption.is_none_or(|t| at >= t + RECOVERY);
        if self.path_exists() && recovered {
            Expect::Delivered
        } else {
            Expect::Uncertain
        }
    }

    /// The state after `t`; every transition runs the world for [`Transition::duration`].
    pub fn apply(&mut self, t: &Transition) {
        let disrupt = |m: &mut Self| m.last_disruption = Some(m.now);
        match t {
            // A portal restart rotates the preshared keys but leaves established tunnels alone,
            // and nodes rejoin within a backoff: new connections must work right after it.
            Transition::Send { .. } | Transition::Advance { .. } | Transition::PortalRestart => {}
            // These break paths silently: the nodes find out through failed checks.
            Transition::NatExpiry(_)
            | Transition::GatewayRestart
            | Transition::ClientRestart(_) => {
                disrupt(self);
            }
            Transition::RelayCrash(r) => {
                self.relays_up[*r] = false;
                disrupt(self);
            }
            Transition::RelayRestart(r) => self.relays_up[*r] = true,
            Transition::BlockDirect => {
                self.direct_blocked = true;
                disrupt(self);
            }
            Transition::UnblockDirect => self.direct_blocked = false,
            Transition::Revoke { client, resource } => {
                self.authorized.remove(&(*client, *resource));
            }
            Transition::Authorize { client, resource } => {
                self.authorized.insert((*client, *resource));
            }
        }
        self.now += t.duration();
    }

    /// Whether `t` makes sense now (a restart of a relay that runs does not).
    pub fn allows(&self, t: &Transition) -> bool {
        match t {
            Transition::RelayCrash(r) => self.relays_up[*r],
            Transition::RelayRestart(r) => !self.relays_up[*r],
            Transition::BlockDirect => !self.direct_blocked,
            Transition::UnblockDirect => self.direct_blocked,
            Transition::Revoke { client, resource } => {
                self.authorized.contains(&(*client, *resource))
            }
            Transition::Authorize { client, resource } => {
                !self.authorized.contains(&(*client, *resource))
            }
            Transition::Send { .. }
            | Transition::Advance { .. }
            | Transition::PortalRestart
            | Transition::NatExpiry(_)
            | Transition::GatewayRestart
            | Transition::ClientRestart(_) => true,
        }
    }
}
