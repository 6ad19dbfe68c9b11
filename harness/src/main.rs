//! `harness run --seed N`: a client and a gateway connect through the in-memory network and
//! exchange traffic; the timeline of what happened is printed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use harness::memnet::MemNet;

#[derive(Parser)]
#[command(about = "The simulated world of the zero-trust access system")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect a client behind a NAT to a gateway and exchange traffic, printing a timeline.
    Run {
        /// Decides every random choice: keys, ICE credentials, tie-breakers, timings.
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
    match cli.command {
        Command::Run { seed, seconds, log } => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log)?)
                .init();
            run(seed, seconds)
        }
    }
}

fn run(seed: u64, seconds: u64) -> anyhow::Result<()> {
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
    println!(
        "dropped datagrams: client {}, gateway {}",
        net.host(client).errors.len(),
        net.host(gateway).errors.len()
    );
    anyhow::ensure!(
        at_gateway as u64 == sent_each_way && at_client as u64 == sent_each_way,
        "packets were lost"
    );
    Ok(())
}
