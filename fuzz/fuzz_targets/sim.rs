//! The whole deterministic simulation (portal, relays, two clients and a gateway behind NATs,
//! resources; production code in turmoil), driven from fuzzer bytes so that coverage
//! guidance can steer towards transition sequences proptest's random generation rarely hits.
//!
//! Input: 8 bytes of seed (little endian; it decides keys, NAT types and every random choice
//! of the world), then up to [`MAX_TRANSITIONS`] transitions of 2 bytes each (kind, argument).
//! Transitions the model does not allow at that point (restarting a running relay) are
//! dropped while decoding, as the property test never generates them.
//!
//! Properties: the same as `cargo test --test sim`, through the same code
//! (`harness::sim::case`): after every step the reference model's expectations hold (a packet
//! to an authorized resource arrives exactly once and is echoed once the world had time to
//! recover, an unauthorized one never arrives, nothing is duplicated, no client gets another
//! client's packet, no probe arrives with a spoofed source), and nothing logs at ERROR.
//!
//! An input costs up to about 40 s of CPU under the sanitizer (it simulates up to 20 minutes of
//! a whole deployment), so this target is for long campaigns; the seeds each cover a fault.
//!
//! A crash replays with `cargo +nightly fuzz run sim <crash file>`. `cargo +nightly fuzz fmt
//! sim <crash file>` prints the decoded case as `scenario(seed, &[transitions])`, the call a
//! `scenario_*` test in `tests/sim.rs` makes; the failure message prints the whole test.

#![no_main]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use harness::sim::case::run_case;
use harness::sim::model::{Model, Side, Transition, CLIENTS, LINK_SITES, NODES, RELAYS, RESOURCES};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer as _;

/// Each transition runs 2 to 200 s of simulated time, so longer sequences cost tens of seconds
/// of CPU; six still combine faults with the sends that check them.
const MAX_TRANSITIONS: usize = 6;

static ERRORS: AtomicU64 = AtomicU64::new(0);

/// Counts ERROR events of the system under test, as `tests/sim.rs` does.
struct ErrorCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The decoded input: the seed and the transitions the model allows, in order.
struct Input {
    seed: u64,
    transitions: Vec<Transition>,
}

impl Input {
    fn decode(data: &[u8]) -> Self {
        let mut seed = [0u8; 8];
        let head = data.len().min(8);
        seed[..head].copy_from_slice(&data[..head]);
        let seed = u64::from_le_bytes(seed);
        // The model's preconditions, as the property test applies them, so that the printed
        // case is exactly what ran.
        let mut model = Model::initial(seed);
        let transitions = data[head..]
            .chunks_exact(2)
            .take(MAX_TRANSITIONS)
            .map(|pair| transition(pair[0], pair[1]))
            .filter(|t| {
                let allowed = model.allows(t);
                if allowed {
                    model.apply(t);
                }
                allowed
            })
            .collect();
        Self { seed, transitions }
    }

    /// The regression test that replays this case, ready for `tests/sim.rs`.
    fn as_test(&self) -> String {
        [
            "#[test]".to_owned(),
            format!("fn scenario_fuzz_{:016x}() {{", self.seed),
            "    use Side::*;".to_owned(),
            "    use Transition::*;".to_owned(),
            format!("    {self:?};"),
            "}".to_owned(),
        ]
        .join("\n")
    }
}

/// What `cargo fuzz fmt` prints: the call that replays the case from a fresh world.
impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenario({}, &{:#?})", self.seed, self.transitions)
    }
}

/// The fuzzer's bytes decode as above, all of them (no `arbitrary` framing), so the committed
/// seeds and `gen_corpus.py` stay byte formats.
impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self::decode(u.bytes(u.len())?))
    }

    fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self::decode(u.take_rest()))
    }
}

/// One transition from (kind, argument); the argument picks client, resource, relay, side,
/// places, node or duration. Kinds 0 to 15 keep their meaning as kinds are added, so that
/// committed seeds and crash files still decode to the same case.
fn transition(kind: u8, arg: u8) -> Transition {
    let a = usize::from(arg);
    let client = a % CLIENTS;
    let resource = (a / CLIENTS) % RESOURCES;
    let relay = a % RELAYS;
    // Every non-empty set of places.
    let site_sets = (1 << LINK_SITES) - 1;
    match kind % 24 {
        0..=3 | 23 => Transition::Send { client, resource },
        4 => Transition::Advance {
            secs: 1 + u64::from(arg) % 200,
        },
        5 => Transition::PortalRestart,
        6 => Transition::NatExpiry(if arg & 1 == 0 {
            Side::Clients
        } else {
            Side::Gateway
        }),
        7 => Transition::RelayCrash(relay),
        8 => Transition::RelayRestart(relay),
        9 => Transition::BlockDirect,
        10 => Transition::UnblockDirect,
        11 => Transition::Revoke { client, resource },
        12 => Transition::Authorize { client, resource },
        13 => Transition::GatewayRestart,
        14 => Transition::ClientRestart(client),
        15 => Transition::Advance {
            secs: 20 + u64::from(arg) % 26,
        },
        16 => Transition::SendTcp { client, resource },
        17 => Transition::Ping { client, resource },
        // Within the property test's ranges: 3 to 15 s of loss, 5 to 90 s of partition,
        // policies whose authorizations last 30 to 120 s.
        18 => Transition::LossBurst {
            sites: u8::try_from(1 + a % site_sets).unwrap_or(1),
            secs: 3 + (a / site_sets) as u64 % 13,
        },
        19 => Transition::PortalPartition {
            node: a % NODES,
            secs: 5 + (a / NODES) as u64 % 86,
        },
        20 => Transition::Roam(client),
        21 => Transition::RelayReplace(relay),
        _ => Transition::AuthorizeFor {
            client,
            resource,
            secs: 30 + (a / (CLIENTS * RESOURCES)) as u64 * 2 % 91,
        },
    }
}

fuzz_target!(|input: Input| {
    static LOGGING: Once = Once::new();
    LOGGING.call_once(|| {
        // Only the counter: formatting logs would cost more than the simulation.
        // Filtered to ERROR so the nodes' DEBUG and TRACE call sites stay disabled.
        let layer = ErrorCounter.with_filter(tracing_subscriber::filter::LevelFilter::ERROR);
        let _ = tracing_subscriber::registry().with(layer).try_init();
    });
    ERRORS.store(0, Ordering::Relaxed);
    let (_, result) = run_case(input.seed, &input.transitions);
    if let Err(failure) = result {
        panic!("{failure}\nreplay it as a test:\n{}", input.as_test());
    }
    let errors = ERRORS.load(Ordering::Relaxed);
    assert_eq!(
        errors,
        0,
        "{errors} ERROR lines logged\nreplay it as a test:\n{}",
        input.as_test()
    );
});
