//! How a connection is timed: [`ConnectionConfig`] and its documented defaults.

use std::time::Duration;

/// A connection without traffic for this long goes idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(20);
/// The STUN keep-alive interval of an idle connection.
pub const IDLE_STUN_INTERVAL: Duration = Duration::from_secs(25);
/// Once ICE is connected, a WireGuard session must exist within this long. boringtun itself
/// keeps trying for 90 s, which would hide a wrong key or PSK for a minute and a half.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(15);
/// ICE must find a path within this long of the connection's creation or last new candidate.
pub const ICE_SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long ICE may stay disconnected, e.g. while a relay is replaced and the new candidates are
/// on their way, before the connection is declared failed.
pub const MIGRATION_GRACE: Duration = Duration::from_secs(2);
/// [`MIGRATION_GRACE`] for the gateway's side (ICE-controlled). Its paths die when a client
/// whose connection idles gets a new public address (a roam, a NAT that forgot its mapping):
/// the gateway's checks go to the old one, and nothing reaches the gateway from the new one
/// until the client's next check, up to [`IDLE_STUN_INTERVAL`] later. A gateway that failed
/// the connection meanwhile drops that check as meant for no connection, while the client
/// still takes its connection for working: its next packet waits until its own ICE has given up
/// every pair and a new connection carries it, 15 s. Kept this long, the connection answers the
/// check from the new address and its paths come back.
pub const CONTROLLED_MIGRATION_GRACE: Duration = Duration::from_secs(60);
/// Signalled remote candidates per connection, by default. A peer has a few host candidates, a
/// server-reflexive one per NAT mapping and two per relay (relayed and server-reflexive); each
/// candidate costs connectivity checks, and a permission and a channel on every one of our
/// relays, so a peer that signals thousands would exhaust the relays' channels for everyone.
pub const MAX_REMOTE_CANDIDATES: usize = 32;

/// How long packets for a path in doubt wait at most while ICE still takes the path for working
/// (see `wake.rs`). A working path answers within a round trip and a dead one is given up after
/// 4 unanswered checks, 4 to 6 s from the first: this only bounds a path that does neither.
pub const WAKE_HOLD: Duration = Duration::from_secs(10);

/// How often a connection whose data flows through a relay checks again the pairs that would
/// be better and failed: a direct path that failed during an outage, or before the peer's
/// NAT let it through, is taken within this long of working again. Each round costs a few
/// checks per such pair, and only while data flows.
pub const BETTER_PATH_RETRY: Duration = Duration::from_secs(5);

/// At most one proactive WireGuard roll-over (on upsert) per this long.
pub const ROLLOVER_DEBOUNCE: Duration = Duration::from_secs(20);

/// The timing of a connection. [`ConnectionConfig::default`] is what the binaries and the
/// simulation run; tests may change a field to reach a deadline sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// How often an active connection drives boringtun's timers; its keep-alive, rekey and
    /// retry timers are only as precise as this. An idle connection drives them when one is due
    /// (`Tunn::next_timer_at`), and at most this often. Default 250 ms.
    pub wireguard_tick: Duration,
    /// No traffic for this long makes a connection idle. Default [`IDLE_AFTER`].
    pub idle_after: Duration,
    /// The STUN keep-alive interval of an idle connection. Default [`IDLE_STUN_INTERVAL`].
    pub idle_stun_interval: Duration,
    /// How long packets sent after an idle spell are held back at most while the path is
    /// checked. Default [`WAKE_HOLD`].
    pub wake_hold: Duration,
    /// The STUN keep-alive interval of an active connection (`is`' longest retransmission
    /// delay). Default 1 s: a path that stops answering is noticed within seconds.
    pub active_stun_interval: Duration,
    /// Unanswered checks after which a pair of an active connection with a nominated path
    /// fails (ICE then moves to the next working pair). Default 4: about 3 s at a 1 s
    /// interval.
    pub active_stun_retransmits: usize,
    /// Once ICE is connected, a WireGuard session must exist within this long; an established
    /// connection whose handshakes go unanswered this long fails too. Default
    /// [`HANDSHAKE_DEADLINE`].
    pub handshake_deadline: Duration,
    /// ICE must find a path within this long of the connection's creation or its last new
    /// remote candidate. Default [`ICE_SETUP_TIMEOUT`].
    pub ice_setup_timeout: Duration,
    /// How long ICE may stay disconnected before the connection fails. Default
    /// [`MIGRATION_GRACE`].
    pub migration_grace: Duration,
    /// The same on the gateway's side. Default [`CONTROLLED_MIGRATION_GRACE`].
    pub controlled_migration_grace: Duration,
    /// How often an active connection on a relayed path checks the better pairs that failed
    /// again. Default [`BETTER_PATH_RETRY`].
    pub better_path_retry: Duration,
    /// At most one proactive WireGuard roll-over (on upsert) per this long. Default
    /// [`ROLLOVER_DEBOUNCE`].
    pub rollover_debounce: Duration,
    /// The client renews a session this old even when no data flows (boringtun forgets keys at
    /// 180 s and gives up at 540 s). Default 300 s.
    pub idle_rekey: Duration,
    /// A session this old means the peer stopped renewing it: the connection fails. Default
    /// 480 s.
    pub session_give_up: Duration,
    /// Peer-reflexive remote candidates learned per connection at most (from direct checks,
    /// and as many from checks a relay delivered): two
    /// address-and-port-dependent NATs otherwise teach each other new ones without end.
    /// Default 8.
    pub max_peer_reflexive: usize,
    /// Signalled remote candidates a connection takes at most ([`MAX_REMOTE_CANDIDATES`]);
    /// more are dropped and counted.
    pub max_remote_candidates: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            wireguard_tick: Duration::from_millis(250),
            idle_after: IDLE_AFTER,
            idle_stun_interval: IDLE_STUN_INTERVAL,
            wake_hold: WAKE_HOLD,
            active_stun_interval: Duration::from_secs(1),
            active_stun_retransmits: 4,
            handshake_deadline: HANDSHAKE_DEADLINE,
            ice_setup_timeout: ICE_SETUP_TIMEOUT,
            migration_grace: MIGRATION_GRACE,
            controlled_migration_grace: CONTROLLED_MIGRATION_GRACE,
            better_path_retry: BETTER_PATH_RETRY,
            rollover_debounce: ROLLOVER_DEBOUNCE,
            idle_rekey: Duration::from_secs(300),
            session_give_up: Duration::from_secs(480),
            max_peer_reflexive: 8,
            max_remote_candidates: MAX_REMOTE_CANDIDATES,
        }
    }
}
