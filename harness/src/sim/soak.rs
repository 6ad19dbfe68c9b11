//! Long life: one world for days of simulated time, in rounds of traffic, one change or fault
//! and an idle stretch of minutes to an hour, against the same model and invariants as a case,
//! and against caps on what the relays hold for the nodes, which must not grow with time or
//! churn.
//!
//! The portal's relay credentials last [`super::deployment::RELAY_CREDENTIALS_LIFETIME`] here,
//! so a day holds dozens of renewals; a relay that sees expired ones fails the invariants.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::case::Case;
use super::model::{Transition, CLIENTS, RELAYS, RESOURCES};

/// Channels one relay allocation may hold in the simulated world: the two clients and the
/// gateway each have a handful of candidates, new ones at every restart and roam. Released
/// channels leave the relay 10 minutes after their last refresh; seed 1 peaks at 27 over 72
/// hours, and at 39 (still growing) when the node never releases any.
pub const SOAK_MAX_CHANNELS: usize = 32;
/// Peer IPs one relay allocation may hold a permission for.
pub const SOAK_MAX_PERMISSIONS: usize = 16;
/// Allocations one relay may hold at once: one per node, plus those of earlier 5-tuples (a
/// restart, a roam) until they expire.
pub const SOAK_MAX_ALLOCATIONS: usize = 12;

/// Transitions a failure message lists, the failing one last.
const RECENT_KEPT: usize = 12;

/// What a soak saw, for its report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoakReport {
    /// Simulated time so far.
    pub elapsed: Duration,
    /// Rounds completed.
    pub rounds: u64,
    /// Changes and faults applied.
    pub changes: u64,
    /// The most allocations one relay held at a check.
    pub max_allocations: usize,
    /// The most channels one allocation held at a check.
    pub max_channels: usize,
    /// The most permissions one allocation held at a check.
    pub max_permissions: usize,
    /// Probes that had to arrive and did.
    pub delivered: u64,
    /// Probes the model could not hold to an outcome.
    pub uncertain: u64,
    /// The world's trace hash so far (see [`crate::turmoil_net::Trace`]).
    pub trace_hash: u64,
}

/// Runs `seed`'s world for `hours` of simulated time; `progress` gets the report after every
/// simulated hour. The first failed check (model, invariants, caps) ends it.
pub fn soak(
    seed: u64,
    hours: u64,
    mut progress: impl FnMut(&SoakReport),
) -> Result<SoakReport, String> {
    let mut case = Case::start_obedient(seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x50A4);
    let mut report = SoakReport::default();
    let end = Duration::from_secs(hours * 3600);
    let mut next_hour = Duration::from_secs(3600);
    // The last transitions, with when they started, for the failure message.
    let mut recent: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    while case.deployment.elapsed() < end {
        for t in round(&mut rng) {
            if !case.model.allows(&t) {
                continue;
            }
            if recent.len() == RECENT_KEPT {
                recent.pop_front();
            }
            recent.push_back(format!("{} s {t}", case.deployment.elapsed().as_secs()));
            if t.probe().is_none() && !matches!(t, Transition::Advance { .. }) {
                report.changes += 1;
            }
            let label = t.to_string();
            case.step(&t).map_err(|e| {
                let before: Vec<&str> = recent.iter().map(String::as_str).collect();
                format!(
                    "{label} at {} s: {e} (after: {})",
                    case.deployment.elapsed().as_secs(),
                    before.join(", ")
                )
            })?;
            check_caps(&case, &mut report)?;
        }
        report.rounds += 1;
        report.elapsed = case.deployment.elapsed();
        let get = |k: &str| case.counts.0.get(k).copied().unwrap_or(0);
        report.delivered = get("checked:delivered");
        report.uncertain = get("checked:uncertain");
        report.trace_hash = case.deployment.trace.hash();
        if report.elapsed >= next_hour {
            progress(&report);
            next_hour = Duration::from_secs((report.elapsed.as_secs() / 3600 + 1) * 3600);
        }
    }
    Ok(report)
}

/// One round: traffic of every client, one change or fault, the traffic again (which checks
/// the change), then an idle stretch of 2 minutes to an hour.
fn round(rng: &mut ChaCha8Rng) -> Vec<Transition> {
    let mut out = Vec::new();
    let traffic = |rng: &mut ChaCha8Rng, out: &mut Vec<Transition>| {
        for client in 0..CLIENTS {
            let resource = rng.gen_range(0..RESOURCES);
            out.push(if rng.gen_bool(0.5) {
                Transition::Send { client, resource }
            } else {
                Transition::Ping { client, resource }
            });
        }
    };
    traffic(rng, &mut out);
    let client = rng.gen_range(0..CLIENTS);
    let resource = rng.gen_range(0..RESOURCES);
    let relay = rng.gen_range(0..RELAYS);
    out.extend(match rng.gen_range(0..10) {
        0 => vec![Transition::ClientRestart(client)],
        1 => vec![Transition::GatewayRestart],
        2 => vec![
            Transition::RelayCrash(relay),
            Transition::Advance { secs: 60 },
            Transition::RelayRestart(relay),
        ],
        3 => vec![Transition::PortalRestart],
        4 => vec![
            Transition::Revoke { client, resource },
            Transition::Advance { secs: 30 },
            Transition::Authorize { client, resource },
        ],
        5 => vec![Transition::NatExpiry(if rng.gen_bool(0.5) {
            super::model::Side::Clients
        } else {
            super::model::Side::Gateway
        })],
        6 => vec![Transition::Roam(client)],
        7 => vec![Transition::RelayReplace(relay)],
        8 => vec![Transition::BlockDirect],
        _ => vec![Transition::UnblockDirect],
    });
    traffic(rng, &mut out);
    out.push(Transition::Advance {
        secs: rng.gen_range(120..=3600),
    });
    out
}

/// What the relays hold for the nodes stays within the soak's caps.
fn check_caps(case: &Case, report: &mut SoakReport) -> Result<(), String> {
    for (r, tap) in case.deployment.relay_taps.iter().enumerate() {
        let allocations = tap.allocations.borrow();
        report.max_allocations = report.max_allocations.max(allocations.len());
        if allocations.len() > SOAK_MAX_ALLOCATIONS {
            return Err(format!(
                "relay {} holds {} allocations, more than {SOAK_MAX_ALLOCATIONS}",
                r + 1,
                allocations.len()
            ));
        }
        for a in allocations.iter() {
            report.max_channels = report.max_channels.max(a.channels.len());
            report.max_permissions = report.max_permissions.max(a.permissions.len());
            if a.channels.len() > SOAK_MAX_CHANNELS {
                return Err(format!(
                    "relay {} allocation {} ({}) holds {} channels, more than {SOAK_MAX_CHANNELS}",
                    r + 1,
                    a.relay,
                    a.username,
                    a.channels.len()
                ));
            }
            if a.permissions.len() > SOAK_MAX_PERMISSIONS {
                return Err(format!(
                    "relay {} allocation {} ({}) holds {} permissions, more than \
                     {SOAK_MAX_PERMISSIONS}",
                    r + 1,
                    a.relay,
                    a.username,
                    a.permissions.len()
                ));
            }
        }
    }
    Ok(())
}
