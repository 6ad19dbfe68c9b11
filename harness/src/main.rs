//! `harness run --seed N`: one seed of a whole simulated deployment, with its timeline.
//! `harness pair --seed N`: a client and a gateway on the in-memory network (the core alone).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use harness::memnet::MemNet;
use harness::sim::case::{run_case_traced, Counts};
use harness::sim::draw::generate;
use harness::sim::model::Transition;

/// Transitions per case in the `run` command.
const CASE_LENGTH: usize = 12;

#[derive(Parser)]
#[command(about = "The simulated world of the zero-trust access system")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Step every tick and run every host in every step, also where none has anything due
    /// (the same trace hash, slower).
    #[arg(long, global = true)]
    no_skip: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a whole deployment (portal, three relays, two clients and a gateway behind NATs)
    /// through a sequence of traffic and faults drawn from the seed, checked against the
    /// reference model; print the timeline and a summary.
    Run {
        /// Decides the world and the sequence: NAT types, keys, every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print only `trace-hash: <hex>`.
        #[arg(long)]
        trace_hash: bool,
        /// Run this many seeds (from `--seed` on) and print the coverage line and a summary.
        #[arg(long)]
        cases: Option<u64>,
        /// Log filter for the nodes' own logs (e.g. `info`); off by default.
        #[arg(long, env = "RUST_LOG", default_value = "off")]
        log: String,
    },
    /// Replay a case file (regressions/sim/*.case): print its timeline and summary, and check
    /// its `require:` lines.
    Replay {
        /// The case file.
        file: std::path::PathBuf,
        /// Log filter for the nodes' own logs (e.g. `info`); off by default.
        #[arg(long, env = "RUST_LOG", default_value = "off")]
        log: String,
    },
    /// Run one world for hours of simulated time: rounds of traffic, one change or fault and an
    /// idle stretch, checked against the model, the invariants and caps on what the relays hold;
    /// print a line per simulated hour.
    Soak {
        /// Decides the world and the rounds.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated hours to run.
        #[arg(long, default_value_t = 72)]
        hours: u64,
        /// Log filter for the nodes' own logs (e.g. `info`); off by default.
        #[arg(long, env = "RUST_LOG", default_value = "off")]
        log: String,
    },
    /// Connect a client behind a NAT to a gateway on the in-memory network and exchange traffic.
    Pair {
        /// Decides keys, ICE credentials, tie-breakers and the link latency.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated seconds to run after the connection is set up.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Log filter for the nodes' own logs (e.g. `debug`); off by default.
        #[arg(long, env = "RUST_LOG", default_value = "off")]
        log: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    harness::turmoil_net::timers::set_skip_ahead(!cli.no_skip);
    match cli.command {
        Command::Run {
            seed,
            trace_hash,
            cases,
            log,
        } => {
            init_logging(&log)?;
            match cases {
                Some(cases) => run_many(seed, cases),
                None => run_one(seed, trace_hash),
            }
        }
        Command::Replay { file, log } => {
            init_logging(&log)?;
            let text = std::fs::read_to_string(&file)?;
            let case = harness::sim::regression::parse(&file, &text).map_err(anyhow::Error::msg)?;
            let counts = timeline(case.seed, &case.transitions, false)?;
            for required in &case.requirements {
                let count = counts.0.get(&required.key).copied().unwrap_or(0);
                anyhow::ensure!(
                    required.met_by(count),
                    "requires {required}, counted {count}"
                );
            }
            println!("requirements met: {}", case.requirements.len());
            Ok(())
        }
        Command::Soak { seed, hours, log } => {
            init_logging(&log)?;
            #[allow(clippy::disallowed_methods)] // wall time for the speed figure only
            let started = Instant::now();
            let print = |r: &harness::sim::soak::SoakReport| {
                println!(
                    "{:>4} h  rounds {:>4}  changes {:>4}  delivered {:>5}  uncertain {:>5}  \
                     max per relay: allocations {}, per allocation: channels {}, permissions {}",
                    r.elapsed.as_secs() / 3600,
                    r.rounds,
                    r.changes,
                    r.delivered,
                    r.uncertain,
                    r.max_allocations,
                    r.max_channels,
                    r.max_permissions
                );
            };
            let report =
                harness::sim::soak::soak(seed, hours, print).map_err(anyhow::Error::msg)?;
            let wall = started.elapsed();
            println!(
                "seed {seed}: {} simulated hours in {:.1} s wall ({:.0} sim-s per wall-s)",
                report.elapsed.as_secs() / 3600,
                wall.as_secs_f64(),
                report.elapsed.as_secs_f64() / wall.as_secs_f64().max(1e-9)
            );
            Ok(())
        }
        Command::Pair { seed, seconds, log } => {
            init_logging(&log)?;
            pair(seed, seconds)
        }
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter)?)
        .with_timer(SimTime)
        .init();
    Ok(())
}

/// Stamps log lines with the simulated time, as the timeline shows it, so that a node's log
/// lines up with the events of the case; outside a simulation step (the driver), with `-`.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}s", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn run_one(seed: u64, only_hash: bool) -> anyhow::Result<()> {
    timeline(seed, &generate(seed, CASE_LENGTH), only_hash).map(|_| ())
}

/// Runs one case and prints its timeline and summary (or only its trace hash); its counts.
fn timeline(seed: u64, transitions: &[Transition], only_hash: bool) -> anyhow::Result<Counts> {
    #[allow(clippy::disallowed_methods)] // wall time for the speed figure only
    let started = Instant::now();
    let (case, result) = run_case_traced(seed, transitions, !only_hash);
    let wall = started.elapsed();
    if only_hash {
        println!("trace-hash: {:016x}", case.deployment.trace.hash());
        return result.map(|()| case.counts).map_err(anyhow::Error::msg);
    }
    let t = case.deployment.nat_types;
    println!(
        "seed {seed}: NATs clients {:?}/{:?}, gateway {:?}/{:?}",
        t.clients.0, t.clients.1, t.gateway.0, t.gateway.1
    );
    println!("{:>10}  {:<10} event", "sim time", "host");
    for line in case.deployment.trace.lines() {
        println!("{line}");
    }
    println!();
    summary(&case.counts, transitions);
    let sim = case.deployment.elapsed();
    println!(
        "simulated {:.0} s in {:.2} s wall ({:.0} sim-s per wall-s); trace-hash: {:016x}",
        sim.as_secs_f64(),
        wall.as_secs_f64(),
        sim.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        case.deployment.trace.hash()
    );
    if let Err(e) = &result {
        println!("FAILED: {e}");
    }
    result.map(|()| case.counts).map_err(anyhow::Error::msg)
}

fn summary(counts: &Counts, transitions: &[Transition]) {
    let get = |k: &str| counts.0.get(k).copied().unwrap_or(0);
    let faults: u64 = counts
        .0
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("checked:")
                && !k.starts_with("nat:")
                && !k.starts_with("proto:")
                && !k.starts_with("path:")
                && !["send", "send_tcp", "ping", "advance_time"].contains(&k.as_str())
        })
        .map(|(_, v)| v)
        .sum();
    println!(
        "packets sent {}: delivered {} (required), refused {} (required), uncertain {}; faults and changes injected {faults}; transitions {}",
        get("checked:delivered") + get("checked:refused") + get("checked:uncertain"),
        get("checked:delivered"),
        get("checked:refused"),
        get("checked:uncertain"),
        transitions.len()
    );
}

fn run_many(first: u64, cases: u64) -> anyhow::Result<()> {
    let mut total = Counts::default();
    let mut failed = Vec::new();
    #[allow(clippy::disallowed_methods)] // wall time for the speed figure only
    let started = Instant::now();
    let mut simulated = Duration::ZERO;
    for seed in first..first.saturating_add(cases) {
        let transitions = generate(seed, CASE_LENGTH);
        let (case, result) = run_case_traced(seed, &transitions, false);
        simulated += case.deployment.elapsed();
        total.merge(&case.counts);
        if let Err(e) = result {
            println!("seed {seed} FAILED: {e}");
            println!("replay: cargo run --release -p harness -- run --seed {seed}");
            failed.push(seed);
        }
    }
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    println!("sim coverage: {}", total.line());
    println!(
        "{cases} cases, {} failed; {:.0} sim-s per wall-s, {:.0} cases per minute",
        failed.len(),
        simulated.as_secs_f64() / wall,
        cases as f64 / wall * 60.0
    );
    anyhow::ensure!(failed.is_empty(), "failing seeds: {failed:?}");
    Ok(())
}

fn pair(seed: u64, seconds: u64) -> anyhow::Result<()> {
    // The simulation's clock starts at an arbitrary point: nothing reads real time after this.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut net = MemNet::new(start);
    net.set_echo(true);
    let latency = Duration::from_millis(5 + seed % 40);
    net.set_latency(latency);
    println!("seed {seed}: one-way latency {latency:?}, client behind a NAT, gateway public");
    println!("{:>10}  {:<10} event", "sim time", "node");

    let nat = net.add_nat(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 40_000);
    let client_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)), 51_820);
    let gateway_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 51_820);
    let client = net.add_client("client", 1, client_addr, Some(nat), seed.wrapping_mul(2));
    let gateway = net.add_gateway("gateway", 1, gateway_addr, None, seed.wrapping_mul(2) + 1);

    net.connect(client, gateway);
    for i in 0..seconds {
        if i < 5 || i + 5 >= seconds {
            net.send(client, gateway, format!("request {i}").as_bytes())?;
            net.run_for(latency * 3);
            net.send(gateway, client, format!("response {i}").as_bytes())?;
        }
        net.run_until(start + Duration::from_secs(i + 1));
    }

    let sent_each_way = seconds.min(5) + seconds.saturating_sub(5).min(5);
    let at_gateway = net.host(gateway).received.len();
    let at_client = net.host(client).received.len();
    println!();
    println!("packets: client -> gateway {at_gateway}/{sent_each_way}, gateway -> client {at_client}/{sent_each_way}");
    anyhow::ensure!(
        at_gateway as u64 == sent_each_way && at_client as u64 == sent_each_way,
        "packets were lost"
    );
    Ok(())
}
