//! Fails a case whose simulated time stops advancing, instead of letting it spin for ever.
//!
//! A bug that leaves a timer in the past (a deadline the node never moves) makes the host's
//! event loop always ready, so turmoil's step never returns and the test would hang without a
//! word. Every [`Heartbeat`] is watched by one thread: if one does not beat for
//! [`STALL_LIMIT`] of wall time, the watchdog prints what it was running (the seed and the
//! transition) and ends the process with a failure.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;

/// Wall time a case may go without a simulation step before it counts as stuck. The slowest
/// legitimate step (a handshake flood in a debug build) takes well under a second.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// How often the watchdog looks.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Beat {
    steps: AtomicU64,
    label: Mutex<String>,
}

/// One running case's pulse: [`Heartbeat::beat`] after every simulation step.
#[derive(Debug)]
pub struct Heartbeat {
    beat: Arc<Beat>,
}

impl Heartbeat {
    /// Watched from now on, until dropped; `label` says what runs (for the failure message).
    pub fn new(label: String) -> Self {
        let beat = Arc::new(Beat {
            steps: AtomicU64::new(0),
            label: Mutex::new(label),
        });
        watch(Arc::downgrade(&beat), STALL_LIMIT, stuck);
        Self { beat }
    }

    /// Simulated time advanced.
    pub fn beat(&self) {
        self.beat.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// What runs now, for the failure message.
    pub fn set_label(&self, label: String) {
        *self
            .beat
            .label
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = label;
    }
}

fn stuck(label: &str) {
    // Straight to the process's stderr: the test harness captures `eprintln!` (this thread
    // inherits the capture), and the process ends before a captured line is shown.
    let _ = writeln!(
        std::io::stderr(),
        "watchdog: simulated time stopped advancing for {}s of wall time: {label}",
        STALL_LIMIT.as_secs()
    );
    std::process::exit(101);
}

type Watched = (Weak<Beat>, u64, Duration, Duration, fn(&str));

static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
static START: Once = Once::new();

/// Watches `beat`: `on_stall` runs with its label once it has not beaten for `limit`.
fn watch(beat: Weak<Beat>, limit: Duration, on_stall: fn(&str)) {
    WATCHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((beat, 0, Duration::ZERO, limit, on_stall));
    START.call_once(|| {
        std::thread::spawn(|| loop {
            // The watchdog measures wall time on purpose: it guards the host running the
            // simulation, not the simulated nodes.
            std::thread::sleep(CHECK_EVERY);
            check(CHECK_EVERY);
        });
    });
}

/// One look: every live heartbeat that did not beat since the last look has been still for
/// `elapsed` more.
fn check(elapsed: Duration) {
    let mut stalled = Vec::new();
    {
        let mut watched = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|(beat, ..)| beat.strong_count() > 0);
        for (beat, seen, still, limit, on_stall) in watched.iter_mut() {
            let Some(beat) = beat.upgrade() else {
                continue;
            };
            let steps = beat.steps.load(Ordering::Relaxed);
            if steps == *seen {
                *still += elapsed;
            } else {
                (*seen, *still) = (steps, Duration::ZERO);
            }
            if *still >= *limit {
                let label = beat
                    .label
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                stalled.push((*on_stall, label));
                *still = Duration::ZERO;
            }
        }
    }
    for (on_stall, label) in stalled {
        on_stall(&label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static STALLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn record(label: &str) {
        STALLED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(label.to_owned());
    }

    /// Driven by hand (`check`), not by the thread's clock: a heartbeat that beats is left alone,
    /// one that stops is reported with its label once the limit has passed.
    #[test]
    fn a_still_heartbeat_is_reported_with_its_label() {
        let limit = Duration::from_secs(3);
        let beating = Arc::new(Beat::default());
        let still = Arc::new(Beat {
            steps: AtomicU64::new(0),
            label: Mutex::new("seed 7 at transition 2".to_owned()),
        });
        watch(Arc::downgrade(&beating), limit, record);
        watch(Arc::downgrade(&still), limit, record);
        for _ in 0..5 {
            beating.steps.fetch_add(1, Ordering::Relaxed);
            check(Duration::from_secs(1));
        }
        let stalled = STALLED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(stalled, ["seed 7 at transition 2"]);
    }
}
