//! The timers every host of a turmoil world has pending, so that the driver can skip ahead.
//!
//! turmoil steps every host on every tick, idle or not, so a world's cost is hosts × ticks. When
//! no message is on the network and no host has a timer due for a while, nothing can happen in
//! that stretch: the driver steps over it in one long step ([`turmoil::Sim::step_by`]). For that
//! it must know every pending timer, so every sleep in the world's hosts goes through [`Sleep`],
//! which keeps its deadline (in simulated time) on a per-thread board while it is pending.
//!
//! The board also knows whose each deadline is (the host whose software made the sleep), so that
//! in each step the driver runs only the hosts with a message or a timer due
//! ([`turmoil::Sim::step_lazily`]): a world of ten hosts where one has work costs one host.
//!
//! The skip is exact, not an approximation: it ends a tick before the earliest deadline, so the
//! steps that do the work are the ones a tick-by-tick run takes, and a seed's trace hash is the
//! same either way (checked in `tests/sim.rs`). A sleep that bypassed the board would break that
//! equality, which is how a missed one shows.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::sim_time;

/// A pending deadline: (simulated deadline, key), so the first of a set is the earliest.
type Entry = (Duration, u64);

#[derive(Default)]
struct Board {
    next_key: u64,
    /// By the host whose software made the sleep (`None`: made outside any host, which every
    /// host then counts as its own). Ordered: a world has a dozen hosts, each looked up on every
    /// step, and hashing the key cost more than the few comparisons.
    pending: BTreeMap<Option<IpAddr>, BTreeSet<Entry>>,
}

impl Board {
    fn earliest_of(&self, host: Option<IpAddr>) -> Option<Duration> {
        self.pending
            .get(&host)
            .and_then(|set| set.first().map(|(at, _)| *at))
    }
}

thread_local! {
    static BOARD: RefCell<Board> = RefCell::new(Board::default());
    static SKIP: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether drivers on this thread skip ahead (the default); off, every step is one tick, which
/// is how the equality of the two is checked.
pub fn set_skip_ahead(on: bool) {
    SKIP.with(|skip| skip.set(on));
}

/// See [`set_skip_ahead`].
pub fn skip_ahead() -> bool {
    SKIP.with(std::cell::Cell::get)
}

/// A tokio sleep whose deadline the board holds while it is pending.
#[derive(Debug)]
pub struct Sleep {
    inner: Pin<Box<tokio::time::Sleep>>,
    entry: Option<(Entry, Option<IpAddr>)>,
}

/// Sleeps until `deadline` (a host's tokio instant), on the board.
pub fn sleep_until(deadline: tokio::time::Instant) -> Sleep {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let at = sim_time() + left;
    let host = turmoil::current_host();
    let entry = BOARD.with(|board| {
        let mut board = board.borrow_mut();
        let key = board.next_key;
        board.next_key += 1;
        board.pending.entry(host).or_default().insert((at, key));
        ((at, key), host)
    });
    Sleep {
        inner: Box::pin(tokio::time::sleep_until(deadline)),
        entry: Some(entry),
    }
}

/// Sleeps for `duration`, on the board.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(tokio::time::Instant::now() + duration)
}

impl Sleep {
    fn take_off(&mut self) {
        if let Some((entry, host)) = self.entry.take() {
            BOARD.with(|board| {
                if let Some(set) = board.borrow_mut().pending.get_mut(&host) {
                    set.remove(&entry);
                }
            });
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let ready = self.inner.as_mut().poll(cx);
        if ready.is_ready() {
            self.take_off();
        }
        ready
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.take_off();
    }
}

/// The earliest deadline pending on this thread, in simulated time.
pub fn earliest() -> Option<Duration> {
    BOARD.with(|board| {
        board
            .borrow()
            .pending
            .values()
            .filter_map(|set| set.first().map(|(at, _)| *at))
            .min()
    })
}

/// Forgets every pending deadline: a new world starts, and the last one's hosts may not all have
/// been dropped yet (their sleeps then take off entries that are gone, which is harmless).
pub fn clear() {
    BOARD.with(|board| board.borrow_mut().pending.clear());
}

/// Whether `host` has a deadline pending at or before `until` (its own, or one made outside
/// any host): a driver that steps hosts lazily ([`turmoil::Sim::step_lazily`]) must run it.
pub fn host_due(host: IpAddr, until: Duration) -> bool {
    BOARD.with(|board| {
        let board = board.borrow();
        [Some(host), None]
            .into_iter()
            .filter_map(|h| board.earliest_of(h))
            .any(|at| at <= until)
    })
}

/// How long the next step may be: `tick` while a message is in flight or a deadline is within
/// two ticks, else whole ticks up to one tick before the earliest deadline (or `limit`, the
/// driver's own next event, whichever comes first).
pub fn next_step(now: Duration, tick: Duration, limit: Duration, in_flight: usize) -> Duration {
    if in_flight > 0 || tick.is_zero() || !skip_ahead() {
        return tick;
    }
    let free_until = earliest().map_or(limit, |at| at.min(limit));
    let ticks = free_until.saturating_sub(now).as_nanos() / tick.as_nanos();
    let skip = u32::try_from(ticks.saturating_sub(1)).unwrap_or(u32::MAX);
    tick * skip.max(1)
}
