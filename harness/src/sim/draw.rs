//! How transitions are drawn: one weighted list of kinds, and one function that makes a kind's
//! transition from the parameters a generator picks. Each generator picks in its own way:
//!
//! - [`generate`]: a seeded RNG, for the `run` command and the determinism test.
//! - The property test in `tests/sim.rs`: proptest draws a kind from [`PROPERTY_WEIGHTS`] and a
//!   number for [`from_digits`], so that shrinking the number shrinks the transition.
//! - The `sim` fuzz target: the fuzzer's (kind, argument) bytes, read with [`Digits`].

use std::ops::RangeInclusive;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{Model, Side, Transition, CLIENTS, LINK_SITES, NODES, RELAYS, RESOURCES};

/// Which transition a generator draws, before its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`Transition::Send`].
    Send,
    /// [`Transition::SendTcp`].
    SendTcp,
    /// [`Transition::Ping`].
    Ping,
    /// [`Transition::Advance`] by ten seconds, with nothing to pick.
    Pause,
    /// [`Transition::Advance`].
    Advance,
    /// [`Transition::PortalRestart`].
    PortalRestart,
    /// [`Transition::NatExpiry`].
    NatExpiry,
    /// [`Transition::RelayCrash`].
    RelayCrash,
    /// [`Transition::RelayRestart`].
    RelayRestart,
    /// [`Transition::BlockDirect`].
    BlockDirect,
    /// [`Transition::UnblockDirect`].
    UnblockDirect,
    /// [`Transition::Revoke`].
    Revoke,
    /// [`Transition::Authorize`].
    Authorize,
    /// [`Transition::GatewayRestart`].
    GatewayRestart,
    /// [`Transition::ClientRestart`].
    ClientRestart,
    /// [`Transition::LossBurst`].
    LossBurst,
    /// [`Transition::PortalPartition`].
    PortalPartition,
    /// [`Transition::Roam`].
    Roam,
    /// [`Transition::RelayReplace`].
    RelayReplace,
    /// [`Transition::AuthorizeFor`].
    AuthorizeFor,
    /// [`Transition::CandidateFlood`].
    CandidateFlood,
    /// [`Transition::HandshakeFlood`].
    HandshakeFlood,
    /// [`Transition::ClaimKey`].
    ClaimKey,
    /// [`Transition::RemoveResource`].
    RemoveResource,
    /// [`Transition::AddResource`].
    AddResource,
    /// [`Transition::Spoof`].
    Spoof,
}

/// How often each kind is drawn, out of the sum of the weights. Traffic and time weigh most:
/// every fault needs packets after it, and time to heal, for its effect to be checked.
///
/// The order is part of what a seed of [`generate`] means (the `run` command's seeds keep their
/// cases), so new kinds go at the end; that is why `Send` has two entries.
pub const WEIGHTS: [(u32, Kind); 21] = [
    (4, Kind::Send),
    (2, Kind::Pause),
    (3, Kind::Advance),
    (1, Kind::PortalRestart),
    (1, Kind::NatExpiry),
    (1, Kind::RelayCrash),
    (1, Kind::RelayRestart),
    (1, Kind::BlockDirect),
    (1, Kind::UnblockDirect),
    (1, Kind::Revoke),
    (1, Kind::Authorize),
    (1, Kind::GatewayRestart),
    (1, Kind::ClientRestart),
    (1, Kind::SendTcp),
    (1, Kind::Ping),
    (1, Kind::LossBurst),
    (1, Kind::PortalPartition),
    (1, Kind::Roam),
    (1, Kind::RelayReplace),
    (1, Kind::AuthorizeFor),
    (2, Kind::Send),
];

/// The property test's weights (`tests/sim.rs`): more traffic per fault than [`WEIGHTS`], so that
/// most faults are followed by the packets that check them (a third of its transitions send).
/// The hostile client's kinds and the resource changes are drawn only here, so the seeds of
/// [`generate`] keep their cases.
pub const PROPERTY_WEIGHTS: [(u32, Kind); 25] = [
    (10, Kind::Send),
    (2, Kind::SendTcp),
    (2, Kind::Ping),
    (1, Kind::LossBurst),
    (1, Kind::PortalPartition),
    (1, Kind::Roam),
    (1, Kind::RelayReplace),
    (1, Kind::AuthorizeFor),
    (5, Kind::Advance),
    (1, Kind::PortalRestart),
    (1, Kind::NatExpiry),
    (1, Kind::RelayCrash),
    (1, Kind::RelayRestart),
    (1, Kind::BlockDirect),
    (1, Kind::UnblockDirect),
    (1, Kind::Revoke),
    (1, Kind::Authorize),
    (1, Kind::GatewayRestart),
    (1, Kind::ClientRestart),
    (1, Kind::CandidateFlood),
    (1, Kind::HandshakeFlood),
    (1, Kind::ClaimKey),
    (1, Kind::RemoveResource),
    (3, Kind::AddResource),
    (1, Kind::Spoof),
];

/// The spans an advance's duration is drawn from, each as likely, so that short advances come up
/// more often than a uniform draw from 1 to 200 s would give them.
pub const ADVANCE_SPANS: [RangeInclusive<u64>; 3] = [1..=30, 20..=45, 60..=200];

/// A parameter [`transition`] asks a generator for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Which client.
    Client,
    /// Which resource.
    Resource,
    /// Which relay.
    Relay,
    /// Which node's portal link (clients first, then the gateway).
    Node,
    /// Which NAT: 0 is the clients', 1 the gateway's.
    Side,
    /// Which places lose datagrams, as a bit set (see [`LINK_SITES`]).
    Sites,
    /// How long a loss burst lasts.
    LossSecs,
    /// How long a portal partition lasts.
    PartitionSecs,
    /// How long the authorizations of an expiring policy last.
    AuthorizationSecs,
    /// Which of [`ADVANCE_SPANS`] an advance's duration comes from.
    AdvanceSpan,
    /// How long an advance lasts, within the span picked before.
    AdvanceSecs(usize),
}

impl Param {
    /// The values it takes.
    pub fn range(self) -> RangeInclusive<u64> {
        let below = |n: usize| 0..=n as u64 - 1;
        match self {
            Self::Client => below(CLIENTS),
            Self::Resource => below(RESOURCES),
            Self::Relay => below(RELAYS),
            Self::Node => below(NODES),
            Self::Side => 0..=1,
            // Every non-empty set of places.
            Self::Sites => 1..=(1 << LINK_SITES) - 1,
            Self::LossSecs => 3..=15,
            Self::PartitionSecs => 5..=90,
            Self::AuthorizationSecs => 30..=120,
            Self::AdvanceSpan => below(ADVANCE_SPANS.len()),
            Self::AdvanceSecs(span) => ADVANCE_SPANS[span.min(ADVANCE_SPANS.len() - 1)].clone(),
        }
    }
}

/// The transition of `kind`, with each parameter from `pick`, which returns a value in the
/// parameter's [`Param::range`]. Parameters are asked for in the order of the transition's
/// fields, each once.
pub fn transition(kind: Kind, mut pick: impl FnMut(Param) -> u64) -> Transition {
    match kind {
        Kind::Send => Transition::Send {
            client: pick(Param::Client) as usize,
            resource: pick(Param::Resource) as usize,
        },
        Kind::SendTcp => Transition::SendTcp {
            client: pick(Param::Client) as usize,
            resource: pick(Param::Resource) as usize,
        },
        Kind::Ping => Transition::Ping {
            client: pick(Param::Client) as usize,
            resource: pick(Param::Resource) as usize,
        },
        Kind::Pause => Transition::Advance { secs: 10 },
        Kind::Advance => {
            let span = pick(Param::AdvanceSpan) as usize;
            Transition::Advance {
                secs: pick(Param::AdvanceSecs(span)),
            }
        }
        Kind::PortalRestart => Transition::PortalRestart,
        Kind::NatExpiry => Transition::NatExpiry(match pick(Param::Side) {
            0 => Side::Clients,
            _ => Side::Gateway,
        }),
        Kind::RelayCrash => Transition::RelayCrash(pick(Param::Relay) as usize),
        Kind::RelayRestart => Transition::RelayRestart(pick(Param::Relay) as usize),
        Kind::BlockDirect => Transition::BlockDirect,
        Kind::UnblockDirect => Transition::UnblockDirect,
        Kind::Revoke => Transition::Revoke {
            client: pick(Param::Client) as usize,
            resource: pick(Param::Resource) as usize,
        },
        Kind::Authorize => Transition::Authorize {
            client: pick(Param::Client) as usize,
            resource: pick(Param::Resource) as usize,
        },
        Kind::GatewayRestart => Transition::GatewayRestart,
        Kind::ClientRestart => Transition::ClientRestart(pick(Param::Client) as usize),
        Kind::LossBurst => Transition::LossBurst {
            sites: u8::try_from(pick(Param::Sites)).unwrap_or(u8::MAX),
            secs: pick(Param::LossSecs),
        },
        Kind::PortalPartition => Transition::PortalPartition {
            node: pick(Param::Node) as usize,
            secs: pick(Param::PartitionSecs),
        },
        Kind::Roam => Transition::Roam(pick(Param::Client) as usize),
        Kind::RelayReplace => Transition::RelayReplace(pick(Param::Relay) as usize),
        Kind::AuthorizeFor => Transition::AuthorizeFor {
            client: pick(Param::Client) as usize,
            resource: pick(Param::Resource) as usize,
            secs: pick(Param::AuthorizationSecs),
        },
        Kind::CandidateFlood => Transition::CandidateFlood,
        Kind::HandshakeFlood => Transition::HandshakeFlood,
        Kind::ClaimKey => Transition::ClaimKey,
        Kind::RemoveResource => Transition::RemoveResource(pick(Param::Resource) as usize),
        Kind::AddResource => Transition::AddResource(pick(Param::Resource) as usize),
        Kind::Spoof => Transition::Spoof(pick(Param::Resource) as usize),
    }
}

/// Parameters read from the digits of one number, lowest first: a parameter with `n` values
/// takes `number % n` and leaves `number / n` to the next. Small numbers give the first client,
/// the first resource and the shortest durations.
#[derive(Debug, Clone, Copy)]
pub struct Digits(pub u64);

impl Digits {
    /// The next digit, as a value in `range`.
    pub fn take(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (low, high) = range.into_inner();
        let n = high.saturating_sub(low).saturating_add(1);
        let digit = self.0 % n;
        self.0 /= n;
        low + digit
    }
}

/// The transition of `kind` with its parameters read from the digits of `number`.
pub fn from_digits(kind: Kind, number: u64) -> Transition {
    let mut digits = Digits(number);
    transition(kind, |param| digits.take(param.range()))
}

/// A transition sequence drawn from `seed` with [`WEIGHTS`]; transitions the model does not
/// allow at that point are drawn again.
pub fn generate(seed: u64, len: usize) -> Vec<Transition> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED);
    let mut model = Model::initial(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let t = seeded(&mut rng);
        if model.allows(&t) {
            model.apply(&t);
            out.push(t);
        }
    }
    out
}

/// One transition from `rng`. How it draws is part of what a seed means: client, resource and
/// relay first whatever the kind, then the kind, then the kind's other parameters, each with the
/// integer type it always had (a `u8` for the sites, a `u32` for the span, a `bool` for the side).
fn seeded(rng: &mut ChaCha8Rng) -> Transition {
    let client = rng.gen_range(0..CLIENTS);
    let resource = rng.gen_range(0..RESOURCES);
    let relay = rng.gen_range(0..RELAYS);
    let total: u32 = WEIGHTS.iter().map(|(weight, _)| weight).sum();
    let kind = weighted(rng.gen_range(0..total));
    transition(kind, |param| match param {
        Param::Client => client as u64,
        Param::Resource => resource as u64,
        Param::Relay => relay as u64,
        Param::Node => rng.gen_range(0..NODES) as u64,
        Param::Side => u64::from(!rng.gen::<bool>()),
        Param::Sites => u64::from(rng.gen_range(1..(1u8 << LINK_SITES))),
        Param::AdvanceSpan => u64::from(rng.gen_range(0..ADVANCE_SPANS.len() as u32)),
        Param::LossSecs
        | Param::PartitionSecs
        | Param::AuthorizationSecs
        | Param::AdvanceSecs(_) => rng.gen_range(param.range()),
    })
}

/// The kind at `k` in `0..` the sum of [`WEIGHTS`].
fn weighted(mut k: u32) -> Kind {
    for (weight, kind) in WEIGHTS {
        if k < weight {
            return kind;
        }
        k -= weight;
    }
    Kind::Send
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_kind_has_a_weight() {
        let kinds: std::collections::BTreeSet<&str> = WEIGHTS
            .iter()
            .chain(&PROPERTY_WEIGHTS)
            .map(|&(_, kind)| from_digits(kind, 0).kind())
            .collect();
        assert_eq!(kinds.len(), Transition::KINDS.len());
    }

    #[test]
    fn digits_stay_in_range() {
        for number in [0, 1, 7, 255, u64::MAX] {
            for (_, kind) in WEIGHTS.iter().chain(&PROPERTY_WEIGHTS).copied() {
                let mut digits = Digits(number);
                transition(kind, |param| {
                    let value = digits.take(param.range());
                    assert!(param.range().contains(&value), "{param:?} {value}");
                    value
                });
            }
        }
    }
}
