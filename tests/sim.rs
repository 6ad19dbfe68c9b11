//! The reference-state test: random sequences of traffic, faults and policy changes against the
//! whole simulated deployment, each step checked against the reference model.
//!
//! `SIM_CASES` sets the number of cases (default 256), `SIM_SEED` the generator's seed (fixed by
//! default, so every run checks the same cases; set it to explore others). proptest persists
//! failing cases to `regressions/sim.txt` and replays them first; the cases kept for good are the
//! files in `regressions/sim/`, replayed by the `regressions` test.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

use std::cell::{Cell, RefCell};

use harness::sim::case::{run_case, Case, Counts};
use harness::sim::draw::{from_digits, generate, PROPERTY_WEIGHTS};
use harness::sim::model::{Model, Transition};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestError, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

thread_local! {
    static COVERAGE: RefCell<Counts> = RefCell::new(Counts::default());
    // Per thread: a simulation runs on its test's thread, and tests run side by side.
    static ERRORS: Cell<u64> = const { Cell::new(0) };
    static WARNINGS: Cell<u64> = const { Cell::new(0) };
}

/// Counts ERROR and WARN events of every log line of the system under test.
struct LevelCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LevelCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        match *event.metadata().level() {
            tracing::Level::ERROR => ERRORS.with(|n| n.set(n.get() + 1)),
            tracing::Level::WARN => WARNINGS.with(|n| n.set(n.get() + 1)),
            _ => {}
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(LevelCounter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(filter),
        )
        .try_init();
}

use tracing_subscriber::Layer as _;

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        any::<u64>().prop_map(Model::initial).boxed()
    }

    /// A kind drawn with the property test's weights, and a number whose digits are its
    /// parameters: shrinking the number makes a transition with the first client, the first
    /// resource, the shortest duration.
    fn transitions(_: &Model) -> BoxedStrategy<Transition> {
        let kinds = PROPERTY_WEIGHTS.map(|(weight, kind)| (weight, Just(kind)));
        (Union::new_weighted(kinds.to_vec()), any::<u64>())
            .prop_map(|(kind, number)| from_digits(kind, number))
            .boxed()
    }

    fn preconditions(state: &Model, t: &Transition) -> bool {
        state.allows(t)
    }

    fn apply(mut state: Model, t: &Transition) -> Model {
        state.apply(t);
        state
    }
}

struct Sim;

impl StateMachineTest for Sim {
    type SystemUnderTest = Case;
    type Reference = Reference;

    fn init_test(model: &Model) -> Case {
        ERRORS.with(|n| n.set(0));
        match Case::start(model.seed) {
            Ok(case) => case,
            Err(e) => panic!("the world did not start: {e}"),
        }
    }

    fn apply(mut case: Case, _: &Model, t: Transition) -> Case {
        if let Err(e) = case.step(&t) {
            panic!("{t}: {e}");
        }
        case
    }

    fn check_invariants(_: &Case, _: &Model) {
        assert_eq!(ERRORS.with(Cell::get), 0, "an ERROR was logged");
    }

    fn teardown(case: Case, _: Model) {
        COVERAGE.with(|c| c.borrow_mut().merge(&case.counts));
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/regressions/sim.txt"
        )))),
        max_shrink_iters: 256,
        // The same cases on every run, so CI is reproducible; SIM_SEED explores others.
        rng_seed: match std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
            Some(seed) => RngSeed::Fixed(seed),
            None => RngSeed::Fixed(0x51D_C0DE),
        },
        ..Config::default()
    }
}

fn run_cases(cases: u32) {
    let config = config(cases);
    let mut runner = TestRunner::new(config.clone());
    let strategy = Reference::sequential_strategy(5..20);
    let result = runner.run(&strategy, |(initial, transitions, seen)| {
        Sim::test_sequential(config.clone(), initial, transitions, seen);
        Ok(())
    });
    let coverage = COVERAGE.with(|c| c.borrow().0.clone());
    // Straight to stderr, past the test harness's capture: the coverage line is part of what
    // every run reports, passing or not.
    let report = format!(
        "sim coverage: {}\nsim warnings logged: {}\n",
        COVERAGE.with(|c| c.borrow().line()),
        WARNINGS.with(Cell::get)
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
    if let Err(e) = result {
        if let TestError::Fail(_, (initial, transitions, _)) = &e {
            let case = harness::sim::regression::to_text(initial.seed, transitions);
            let text = format!("keep it as regressions/sim/<what-broke>.case:\n{case}");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
        }
        panic!("{e}");
    }
    // A short run (SIM_CASES below 64, to look at one thing) need not reach everything.
    if cases < 64 {
        return;
    }
    for kind in Transition::KINDS {
        assert!(
            coverage.get(kind).copied().unwrap_or(0) > 0,
            "transition {kind} never ran"
        );
    }
    // Every path kind the world can produce carried a packet that had to arrive. Inside hosts
    // are isolated behind their NATs, so a path to the gateway's own address never works.
    for kind in ["path:srflx", "path:relayed"] {
        assert!(
            coverage.get(kind).copied().unwrap_or(0) > 0,
            "no required delivery ever went over a {kind} path"
        );
    }
}

#[test]
fn sim() {
    init_logging();
    let cases = std::env::var("SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    run_cases(cases);
}

/// The case the determinism check runs: (trace hash, events, datagrams hashed).
fn determinism_case() -> (u64, u64, u64) {
    let transitions = generate(7, 12);
    let (case, result) = run_case(7, &transitions);
    if let Err(e) = result {
        panic!("{e}");
    }
    let trace = &case.deployment.trace;
    (trace.hash(), trace.len(), trace.digested())
}

/// The same seed gives the same trace, down to the bytes of every datagram the NATs carry: twice
/// in this process, and once more in another process (whose OS random source and clock differ).
#[test]
fn determinism() {
    init_logging();
    let first = determinism_case();
    assert!(first.1 > 10, "the trace records the run");
    assert!(first.2 > 100, "the trace hashes the datagrams");
    assert_eq!(
        first,
        determinism_case(),
        "a second run in this process differs"
    );

    let output = std::process::Command::new(std::env::current_exe().unwrap_or_default())
        .args([
            "--exact",
            "determinism_in_a_child_process",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the child process: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("determinism: "))
        .unwrap_or_else(|| panic!("the child printed no result: {stdout}"));
    assert_eq!(line, format!("{first:?}"), "another process differs");
}

/// Skipping ahead over stretches where no host has a timer due and no message is in flight
/// (`harness::turmoil_net::timers`) changes nothing a run does: the same seeds give the same
/// trace hash, datagram bytes included, as a run stepped tick by tick. Cases from the property
/// test's draws, and two hours of the soak, whose idle stretches are where most is skipped.
#[test]
fn skipping_ahead_changes_nothing() {
    use harness::turmoil_net::timers::set_skip_ahead;
    init_logging();
    let run = |skip: bool| {
        set_skip_ahead(skip);
        let cases: Vec<u64> = (1..=4)
            .map(|seed| {
                let (case, result) = run_case(seed, &generate(seed, 12));
                if let Err(e) = result {
                    panic!("seed {seed}: {e}");
                }
                case.deployment.trace.hash()
            })
            .collect();
        // The hostile client's floods and spoofs are not among `generate`'s draws.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/sim");
        let hostile: Vec<u64> = [
            "handshake-flood",
            "spoofed-source-is-dropped-by-the-gateway",
        ]
        .into_iter()
        .map(|name| {
            let file = dir.join(format!("{name}.case"));
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let kept =
                harness::sim::regression::parse(&file, &text).unwrap_or_else(|e| panic!("{e}"));
            let (case, result) = run_case(kept.seed, &kept.transitions);
            if let Err(e) = result {
                panic!("{name}: {e}");
            }
            case.deployment.trace.hash()
        })
        .collect();
        let soak = harness::sim::soak::soak(2, 2, |_| {}).unwrap_or_else(|e| panic!("{e}"));
        (cases, hostile, soak)
    };
    let stepped = run(false);
    let skipped = run(true);
    assert_eq!(stepped, skipped, "skipping ahead changed a run");
}

/// [`determinism`]'s second process.
#[test]
#[ignore = "run by `determinism`, in a process of its own"]
fn determinism_in_a_child_process() {
    init_logging();
    println!("determinism: {:?}", determinism_case());
}

/// Every case kept in `regressions/sim/` (see `harness::sim::regression`): the cases the property
/// test found and those that matter enough to pin down, each from a fresh world, held to the same
/// checks (the model, the invariants, no ERROR logged) and to the counts the file requires.
#[test]
fn regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/sim");
    let cases = match harness::sim::regression::load_dir(&dir) {
        Ok(cases) => cases,
        Err(e) => panic!("{e}"),
    };
    assert!(!cases.is_empty(), "no case files in {}", dir.display());
    for case in cases {
        println!("replaying {}", case.path.display());
        let counts = scenario(case.seed, &case.transitions);
        for required in &case.requirements {
            let count = counts.0.get(&required.key).copied().unwrap_or(0);
            assert!(
                required.met_by(count),
                "{}: requires {required}, counted {count}: {}",
                case.path.display(),
                counts.line()
            );
        }
    }
}

/// Three simulated days of one world (`harness soak`): rounds of traffic, one change or fault
/// each (restarts of every kind, relay crashes and replacements, NAT flushes, roams, policy
/// changes) and idle stretches of up to an hour, held to the model, the invariants (relay
/// credentials, renewed every quarter of an hour here, never reach a relay expired) and caps
/// on the relays' allocations, channels and permissions, which must not grow with churn.
#[test]
fn soak_three_days() {
    init_logging();
    ERRORS.with(|n| n.set(0));
    let report = harness::sim::soak::soak(1, 72, |r| println!("soak: {r:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("soak: {report:?}");
    assert!(report.elapsed.as_secs() >= 72 * 3600);
    assert!(report.rounds >= 100, "{} rounds", report.rounds);
    assert!(
        report.delivered >= 200,
        "{} required deliveries",
        report.delivered
    );
    assert_eq!(ERRORS.with(Cell::get), 0, "an ERROR was logged");
}

/// One case from a fresh world, held to the model, the invariants and no ERROR logged; its
/// counts.
fn scenario(seed: u64, transitions: &[Transition]) -> Counts {
    init_logging();
    ERRORS.with(|n| n.set(0));
    let (case, result) = run_case(seed, transitions);
    if let Err(e) = result {
        // With SIM_TRACE set the trace kept its lines: print the timeline that led here.
        for line in case.deployment.trace.lines() {
            println!("{line}");
        }
        panic!("{e}");
    }
    assert_eq!(ERRORS.with(Cell::get), 0, "an ERROR was logged");
    case.counts
}
