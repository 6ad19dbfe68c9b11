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
//! sim <crash file>` prints the decoded case as a file for `regressions/sim/` (its seed and its
//! transitions as the timeline prints them), and so does the failure message: keep it there,
//! with a note on what broke, and the `regressions` test replays it for good.

#![no_main]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use harness::sim::case::run_case;
use harness::sim::draw::{self, Digits, Kind, Param};
use harness::sim::model::{Model, Transition};
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

    /// The case as a file for `regressions/sim/` (see `harness::sim::regression`).
    fn as_case_file(&self) -> String {
        harness::sim::regression::to_text(self.seed, &self.transitions)
    }
}

/// What `cargo fuzz fmt` prints: the case as a file for `regressions/sim/`.
impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_case_file())
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

/// One transition from (kind, argument): the kind byte picks the kind, the argument's digits its
/// parameters ([`Digits`]: a send's client is `arg % 2`, its resource `arg / 2 % 3`; the relay,
/// side, places, node or duration likewise). Kinds 0 to 23 keep their meaning as kinds are
/// added, so that committed seeds and crash files still decode to the same case; 24 and 25 are
/// the hostile client's floods, 26 its claim of the other client's key, 27 and 28 an
/// administrator removing a resource and putting it back.
fn transition(kind: u8, arg: u8) -> Transition {
    let (kind, advance) = match kind % 29 {
        0..=3 | 23 => (Kind::Send, None),
        4 => (Kind::Advance, Some(1..=200)),
        5 => (Kind::PortalRestart, None),
        6 => (Kind::NatExpiry, None),
        7 => (Kind::RelayCrash, None),
        8 => (Kind::RelayRestart, None),
        9 => (Kind::BlockDirect, None),
        10 => (Kind::UnblockDirect, None),
        11 => (Kind::Revoke, None),
        12 => (Kind::Authorize, None),
        13 => (Kind::GatewayRestart, None),
        14 => (Kind::ClientRestart, None),
        15 => (Kind::Advance, Some(20..=45)),
        16 => (Kind::SendTcp, None),
        17 => (Kind::Ping, None),
        18 => (Kind::LossBurst, None),
        19 => (Kind::PortalPartition, None),
        20 => (Kind::Roam, None),
        21 => (Kind::RelayReplace, None),
        22 => (Kind::AuthorizeFor, None),
        24 => (Kind::CandidateFlood, None),
        25 => (Kind::HandshakeFlood, None),
        26 => (Kind::ClaimKey, None),
        27 => (Kind::RemoveResource, None),
        _ => (Kind::AddResource, None),
    };
    let mut digits = Digits(u64::from(arg));
    draw::transition(kind, |param| match (param, &advance) {
        // An advance lasts within its kind byte's range, not a span: the byte format is older
        // than the spans.
        (Param::AdvanceSpan, _) => 0,
        (Param::AdvanceSecs(_), Some(secs)) => digits.take(secs.clone()),
        // In steps of 2 s, so that the digits a byte has left after the client and the resource
        // reach most of the range.
        (Param::AuthorizationSecs, _) => 30 + 2 * digits.take(0..=45),
        (other, _) => digits.take(other.range()),
    })
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
        panic!(
            "{failure}\nkeep it as regressions/sim/<what-broke>.case:\n{}",
            input.as_case_file()
        );
    }
    let errors = ERRORS.load(Ordering::Relaxed);
    assert_eq!(
        errors,
        0,
        "{errors} ERROR lines logged\nkeep it as regressions/sim/<what-broke>.case:\n{}",
        input.as_case_file()
    );
});
