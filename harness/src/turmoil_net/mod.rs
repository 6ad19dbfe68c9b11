//! A whole deployment in [turmoil]: nodes, relays and the portal on simulated sockets, NAT boxes
//! as middle hosts, and faults applied where the bytes are visible.
//!
//! turmoil has no routing and no NAT: packets go host to host by IP. The pieces here fill that gap:
//!
//! - [`turmoil_io`]: the node's, the relay's and the portal's I/O traits over turmoil's sockets
//!   and tokio's paused clock.
//! - [`nat_host`]: an RFC 4787 NAT as a turmoil host, around the sans-IO mapping table in
//!   [`crate::nat`]. Hosts behind it send through a [`NatShim`] socket, which carries the real
//!   destination and source in a small header ([`shim`]).
//! - [`faults`] (what happens to a datagram: loss, delay, duplication, reordering, class
//!   filters), [`faulty_socket`] (a socket wrapper that applies them) and [`links`] (turmoil's own
//!   link settings, one-way partitions, and the swizzle fault).
//! - [`roaming`]: a node socket that can be rebound to a new inside port under the running node.
//! - [`probe`]: small public and inside hosts for tests (an echo that reports the source it saw, a
//!   probe that sends on command and records what it receives).
//! - [`trace`]: a deterministic event trace, hashed with a fixed hasher.
//!
//! # Building a network
//!
//! 1. [`sim_builder`] with a fixed seed, epoch and tick.
//! 2. `sim.lookup(name)` every host name first: turmoil hands out IPs in order of first lookup.
//! 3. Register each NAT with `sim.host(name, nat.software())` ([`NatHandle`]), each inside host
//!    on a [`NatShim`] bound to its inside address and pointing at [`NatHandle::inside_addr`],
//!    each public host on [`TurmoilSocket`] (optionally wrapped in a [`FaultySocket`]).
//! 4. [`links::isolate_inside`] so that outsiders cannot reach inside hosts by their own IP.
//!
//! Time: everything that must be deterministic reads [`sim_time`] (the simulation's elapsed time,
//! shared by all hosts); each host's tokio `Instant`s have their own base and differ between runs.

pub mod faults;
pub mod faulty_socket;
pub mod later;
pub mod links;
pub mod nat_host;
pub mod probe;
pub mod roaming;
pub mod scratch;
pub mod shim;
pub mod timers;
pub mod trace;
pub mod turmoil_io;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use faults::{ClassFault, Direction, FaultStats, Faults, LinkProfile, PacketClass};
pub use faulty_socket::FaultySocket;
pub use links::{Swizzle, SwizzleMode};
pub use nat_host::{NatCommand, NatHandle};
pub use roaming::RoamingSocket;
pub use shim::NatShim;
pub use trace::Trace;
pub use turmoil_io::{TurmoilClock, TurmoilListener, TurmoilNetwork, TurmoilSocket};

/// The tick the world runs at: WAN latencies are tens of milliseconds, and turmoil's cost is
/// hosts × ticks.
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);

/// The port relays listen on; datagrams to or from it are TURN for the class faults.
pub const TURN_PORT: u16 = 3478;

/// What a simulation is built with: everything that could make two runs differ is fixed here.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Seeds turmoil's RNG (link latencies, random link failures).
    pub seed: u64,
    /// Unix time (seconds) at the start.
    pub unix_epoch_secs: u64,
    /// Simulated time per step.
    pub tick: Duration,
    /// The longest the simulation may run (turmoil fails `run` past it).
    pub duration: Duration,
    /// Link latency, the same for every link (min = max: no jitter). Change single links with
    /// [`links::set_link_latency`].
    pub latency: Duration,
}

impl SimSettings {
    /// The simulation epoch ([`crate::SIM_EPOCH_UNIX_SECS`]), the default tick, no latency beyond the tick, `duration` long.
    pub fn new(seed: u64, duration: Duration) -> Self {
        Self {
            seed,
            unix_epoch_secs: crate::SIM_EPOCH_UNIX_SECS,
            tick: DEFAULT_TICK,
            duration,
            latency: Duration::ZERO,
        }
    }
}

/// A turmoil builder with every source of nondeterminism fixed by `settings`.
pub fn sim_builder(settings: &SimSettings) -> turmoil::Builder {
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(settings.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(settings.unix_epoch_secs))
        .tick_duration(settings.tick)
        .simulation_duration(settings.duration)
        .min_message_latency(settings.latency)
        .max_message_latency(settings.latency);
    builder
}

thread_local! {
    // turmoil tells the time only inside a host; the driver's calls between steps (an admin
    // change at the portal, which mints relay credentials with it) read this instead.
    static DRIVER_ELAPSED: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// Simulated time since the start, the same on every host and, between steps, in the driver
/// (see [`set_driver_elapsed`]).
pub fn sim_time() -> Duration {
    turmoil::sim_elapsed().unwrap_or_else(|| DRIVER_ELAPSED.with(std::cell::Cell::get))
}

/// Tells [`sim_time`] the simulation's time for calls made outside a host: the driver calls it
/// after every step of its `Sim`, and with zero when it builds a new one.
pub fn set_driver_elapsed(elapsed: Duration) {
    DRIVER_ELAPSED.with(|cell| cell.set(elapsed));
}

/// Simulated wall-clock time: `unix_epoch_secs` plus [`sim_time`].
pub fn sim_wall_clock(unix_epoch_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_epoch_secs) + sim_time()
}

/// Locks a mutex that is never held across an `await` nor while panicking on purpose: a
/// poisoned lock still holds consistent state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
