//! A connection's timers: one enum, one table of deadlines.
//!
//! `poll_timeout` takes the earliest armed deadline and `handle_timeout` handles the expired
//! ones in the enum's order, so what a deadline means is written once, in the table, and not
//! once for polling and again for handling.

use std::time::Instant;

/// What a connection wakes up for, in the order expired timers are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// boringtun's timers (keep-alive, rekey, retries) are driven at this pace.
    WireGuardTick,
    /// ICE is disconnected: the connection fails unless ICE recovers by then.
    MigrationGrace,
    /// ICE must find a path by then (from creation or the last new remote candidate).
    IceSetup,
    /// ICE connected: a WireGuard session must exist by then.
    Handshake,
    /// No traffic since: the connection goes idle (sparse keep-alives).
    Idle,
    /// Packets held since the connection woke up go out by then, path proven or not.
    Wake,
    /// The path is relayed and data flows: pairs that would be better, and failed, are
    /// checked again then.
    BetterPath,
}

impl Timer {
    /// Every timer, in the order expired ones are handled.
    pub(crate) const ALL: [Timer; 7] = [
        // Before the tick, after which ICE runs: the pairs it forms are checked at once.
        Timer::BetterPath,
        Timer::WireGuardTick,
        Timer::MigrationGrace,
        Timer::IceSetup,
        Timer::Handshake,
        Timer::Idle,
        Timer::Wake,
    ];

    /// Why the connection wants to wake up, for `poll_timeout`'s callers.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Timer::WireGuardTick => "wireguard timers",
            Timer::MigrationGrace => "migration grace",
            Timer::IceSetup => "ice setup deadline",
            Timer::Handshake => "handshake deadline",
            Timer::Idle => "idle check",
            Timer::Wake => "held packets",
            Timer::BetterPath => "better path",
        }
    }
}

/// The deadline of every [`Timer`], `None` when it is not armed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    /// Arms `timer` unless it already is: a deadline that must not move once set.
    pub(crate) fn set_if_unset(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize].get_or_insert(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }
}

#[cfg(test)]
mod tests {
    // Any instant serves as the origin: nothing here reads the clock again.
    #![allow(clippy::disallowed_methods)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn a_timer_is_armed_kept_and_stopped() {
        let now = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.get(Timer::Idle), None);

        table.set(Timer::Idle, now + Duration::from_secs(1));
        assert_eq!(table.get(Timer::Idle), Some(now + Duration::from_secs(1)));

        table.set_if_unset(Timer::Idle, now + Duration::from_secs(5));
        assert_eq!(table.get(Timer::Idle), Some(now + Duration::from_secs(1)));

        table.stop(Timer::Idle);
        assert_eq!(table.get(Timer::Idle), None);
        assert_eq!(table.get(Timer::Handshake), None);
    }
}
