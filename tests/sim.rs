//! The reference-state test: random sequences of traffic, faults and policy changes against the
//! whole simulated deployment, each step checked against the reference model.
//!
//! `SIM_CASES` sets the number of cases (default 256). Failing cases persist to
//! `regressions/sim.txt` and are replayed first on every run.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::wildcard_enum_match_arm
)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harness::sim::hosts::client_tunnel_ip;
use harness::sim::model::{
    Expect, Model, Side, Transition, CLIENTS, RELAYS, RESOURCES, SEND_WINDOW, WARM_UP,
};
use harness::sim::world::{probe_packet, World, RESOURCE_IPS};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static ERRORS: AtomicU64 = AtomicU64::new(0);
static WARNINGS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COVERAGE: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
}

fn count(key: impl Into<String>) {
    COVERAGE.with(|c| *c.borrow_mut().entry(key.into()).or_default() += 1);
}

/// Counts ERROR and WARN events of every log line of the system under test.
struct LevelCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LevelCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        match *event.metadata().level() {
            tracing::Level::ERROR => {
                ERRORS.fetch_add(1, Ordering::Relaxed);
            }
            tracing::Level::WARN => {
                WARNINGS.fetch_add(1, Ordering::Relaxed);
            }
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

    fn transitions(_: &Model) -> BoxedStrategy<Transition> {
        let client = 0..CLIENTS;
        let resource = 0..RESOURCES;
        let relay = 0..RELAYS;
        prop_oneof![
            6 => (client.clone(), resource.clone())
                .prop_map(|(client, resource)| Transition::Send { client, resource }),
            3 => prop_oneof![1..=30u64, 20..=45u64, 60..=200u64]
                .prop_map(|secs| Transition::Advance { secs }),
            1 => Just(Transition::PortalRestart),
            1 => prop_oneof![Just(Side::Clients), Just(Side::Gateway)].prop_map(Transition::NatExpiry),
            1 => relay.clone().prop_map(Transition::RelayCrash),
            1 => relay.prop_map(Transition::RelayRestart),
            1 => Just(Transition::BlockDirect),
            1 => Just(Transition::UnblockDirect),
            1 => (client.clone(), resource.clone())
                .prop_map(|(client, resource)| Transition::Revoke { client, resource }),
            1 => (client.clone(), resource)
                .prop_map(|(client, resource)| Transition::Authorize { client, resource }),
            1 => Just(Transition::GatewayRestart),
            1 => client.prop_map(Transition::ClientRestart),
        ]
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

struct Sim {
    world: World<'static>,
}

impl StateMachineTest for Sim {
    type SystemUnderTest = Sim;
    type Reference = Reference;

    fn init_test(model: &Model) -> Sim {
        ERRORS.store(0, Ordering::Relaxed);
        let mut world = World::new(model.seed, model.authorized.clone());
        world.run_for(WARM_UP).unwrap();
        let t = world.nat_types;
        count(format!("nat:{:?}/{:?}", t.clients.0, t.gateway.0));
        Sim { world }
    }

    fn apply(mut sim: Sim, model: &Model, t: Transition) -> Sim {
        count(t.kind());
        let w = &mut sim.world;
        w.trace.record_at(w.elapsed(), "driver", &t);
        match &t {
            Transition::Send { client, resource } => {
                let sent_at = model.now - SEND_WINDOW;
                let expect = model.expect(*client, *resource, sent_at);
                let payload = w.fresh_payload(*client);
                let injected = w.inject(*client, probe_packet(*client, *resource, &payload));
                w.run_for(SEND_WINDOW).unwrap();
                check_send(
                    w,
                    *client,
                    *resource,
                    &payload,
                    if injected { expect } else { Expect::Uncertain },
                );
            }
            Transition::Advance { .. } => w.run_for(t.duration()).unwrap(),
            Transition::PortalRestart => settle(w, World::restart_portal),
            Transition::NatExpiry(side) => {
                let side = *side;
                settle(w, |w| w.flush_nat(side));
            }
            Transition::RelayCrash(r) => {
                let r = *r;
                settle(w, |w| w.crash_relay(r));
            }
            Transition::RelayRestart(r) => {
                let r = *r;
                settle(w, |w| w.restart_relay(r));
            }
            Transition::BlockDirect => settle(w, |w| w.block_direct(true)),
            Transition::UnblockDirect => settle(w, |w| w.block_direct(false)),
            Transition::Revoke { client, resource } => {
                let (c, r) = (*client, *resource);
                settle(w, |w| w.set_policy(c, r, false));
            }
            Transition::Authorize { client, resource } => {
                let (c, r) = (*client, *resource);
                settle(w, |w| w.set_policy(c, r, true));
            }
            Transition::GatewayRestart => settle(w, World::restart_gateway),
            Transition::ClientRestart(c) => {
                let c = *c;
                settle(w, |w| w.restart_client(c));
            }
        }
        sim
    }

    fn check_invariants(sim: &Sim, _: &Model) {
        let w = &sim.world;
        // No packet is ever delivered to the wrong client: every echo a client gets carries a
        // payload that names that client.
        for (i, tap) in w.taps.iter().enumerate() {
            for seen in tap.received.borrow().iter() {
                let Ok(p) = node::packet::IpPacket::parse(seen.packet.as_slice()) else {
                    continue;
                };
                if p.payload().starts_with(b"probe c") {
                    let owner = format!("probe c{} ", i + 1);
                    assert!(
                        p.payload().starts_with(owner.as_bytes()),
                        "client {} got someone else's packet: {:?}",
                        i + 1,
                        String::from_utf8_lossy(p.payload())
                    );
                }
            }
        }
        // Every probe that reached a resource came from its sender's tunnel address.
        for seen in w.resources.arrived.borrow().iter() {
            let Ok(p) = node::packet::IpPacket::parse(seen.packet.as_slice()) else {
                continue;
            };
            if let Some(rest) = p.payload().strip_prefix(b"probe c") {
                let sender = u64::from(rest[0] - b'0');
                assert_eq!(
                    p.source(),
                    client_tunnel_ip(sender),
                    "spoofed or mis-routed source"
                );
            }
        }
        assert_eq!(ERRORS.load(Ordering::Relaxed), 0, "an ERROR was logged");
    }
}

fn settle(w: &mut World<'static>, f: impl FnOnce(&mut World<'static>)) {
    f(w);
    w.run_for(harness::sim::model::SETTLE).unwrap();
}

fn check_send(w: &World<'static>, client: usize, resource: usize, payload: &[u8], expect: Expect) {
    let arrivals = w.arrivals(payload);
    let echoes = w.echoes(client, payload);
    let expected_arrival = (
        client_tunnel_ip(client as u64 + 1),
        IpAddr::V4(RESOURCE_IPS[resource]),
    );
    let what = String::from_utf8_lossy(payload);
    match expect {
        Expect::Delivered => {
            count("checked:delivered");
            assert_eq!(
                arrivals,
                vec![expected_arrival],
                "{what} must arrive exactly once"
            );
            assert_eq!(echoes, 1, "{what}: its echo must come back exactly once");
        }
        Expect::Refused => {
            count("checked:refused");
            assert!(
                arrivals.is_empty(),
                "{what} reached a resource it may not reach"
            );
        }
        Expect::Uncertain => {
            count("checked:uncertain");
            assert!(arrivals.len() <= 1 && echoes <= 1, "{what} was duplicated");
        }
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
        ..Config::default()
    }
}

fn run_cases(cases: u32) {
    let config = config(cases);
    let mut runner = TestRunner::new(config.clone());
    let strategy = Reference::sequential_strategy(5..15);
    let result = runner.run(&strategy, |(initial, transitions, seen)| {
        Sim::test_sequential(config.clone(), initial, transitions, seen);
        Ok(())
    });
    let coverage = COVERAGE.with(|c| c.borrow().clone());
    let line: Vec<String> = coverage.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("sim coverage: {}", line.join(" "));
    println!("sim warnings logged: {}", WARNINGS.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("{e}");
    }
    for kind in Transition::KINDS {
        assert!(
            coverage.get(kind).copied().unwrap_or(0) > 0,
            "transition {kind} never ran"
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

/// The same seed twice gives the same trace, byte for byte.
#[test]
fn determinism() {
    init_logging();
    let run = || {
        let model = Model::initial(7);
        let mut world = World::new(model.seed, model.authorized.clone());
        world.run_for(WARM_UP).unwrap();
        let payload = world.fresh_payload(0);
        world.inject(0, probe_packet(0, 1, &payload));
        world.run_for(SEND_WINDOW).unwrap();
        world.restart_portal();
        world.run_for(Duration::from_secs(30)).unwrap();
        (world.trace.hash(), world.trace.len())
    };
    let first = run();
    assert!(first.1 > 10, "the trace records the run");
    assert_eq!(first, run());
}
