//! `relay`: the TURN relay server.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Parser;
use rand::RngCore as _;
use relay_sim::metrics::Snapshot;
use relay_sim::net::{Network as _, TokioNetwork};
use relay_sim::{Config, IpNet, Server};

/// How often the metrics endpoint's snapshot is refreshed from the event loop.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// TURN relay (RFC 8656 over UDP) with TURN REST API credentials.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for clients.
    #[arg(long, env = "RELAY_LISTEN", default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// Address advertised in XOR-RELAYED-ADDRESS (required when listening on 0.0.0.0).
    #[arg(long, env = "RELAY_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// Relay port range, `LOW-HIGH`.
    #[arg(long, env = "RELAY_PORTS", default_value = "49152-65535", value_parser = parse_range)]
    relay_ports: RangeInclusive<u16>,
    /// Shared secret of the TURN REST API credentials.
    #[arg(long, env = "RELAY_AUTH_SECRET", hide_env_values = true)]
    auth_secret: String,
    /// REALM sent to clients.
    #[arg(long, env = "RELAY_REALM", default_value = "zta")]
    realm: String,
    /// Most allocations held at once (508 beyond).
    #[arg(long, env = "RELAY_MAX_ALLOCATIONS", default_value_t = 100_000)]
    max_allocations: usize,
    /// Peer network to serve although it is refused by default (loopback, private, link-local,
    /// multicast, this relay's own address), e.g. `10.0.0.0/8`. Repeatable; comma-separated in
    /// the environment. For labs and tests whose peers live there.
    #[arg(
        long = "allow-peer",
        value_name = "CIDR",
        env = "RELAY_ALLOW_PEER",
        value_delimiter = ',',
        value_parser = relay_sim::parse_network
    )]
    allow_peers: Vec<IpNet>,
    /// Log filter (tracing EnvFilter syntax), e.g. `relay=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, env = "RELAY_LOG_JSON")]
    log_json: bool,
    /// Serve Prometheus metrics (OpenMetrics text) on `http://ADDR/metrics`, e.g.
    /// `127.0.0.1:9101`. Off by default; the endpoint has no authentication, so keep it on a
    /// private address.
    #[arg(long, value_name = "ADDR", env = "RELAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not LOW-HIGH"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|e| format!("low port {lo:?}: {e}"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|e| format!("high port {hi:?}: {e}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?} is not a non-empty range of non-zero ports"));
    }
    Ok(lo..=hi)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = telemetry::init_logging(&args.log, args.log_json) {
        eprintln!("relay: {error:#}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("relay: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let public_ip = match (args.public_ip, args.listen.ip()) {
        (Some(IpAddr::V4(ip)), _) => ip,
        (Some(IpAddr::V6(ip)), _) => {
            return Err(format!("--public-ip {ip}: only IPv4 is supported"))
        }
        (None, IpAddr::V4(ip)) if !ip.is_unspecified() => ip,
        (None, IpAddr::V4(_)) => {
            return Err("--public-ip is required when listening on 0.0.0.0".into())
        }
        (None, IpAddr::V6(ip)) => return Err(format!("--listen {ip}: only IPv4 is supported")),
    };
    let mut config = Config::new(args.realm, args.auth_secret, public_ip);
    config.relay_ports = args.relay_ports;
    config.listen_port = args.listen.port();
    config.max_allocations = args.max_allocations;
    config.allow_peers = args.allow_peers;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let net = TokioNetwork::default();
        let mut seed = [0; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let server = Server::new(config, seed, net.now(), net.unix_time())
            .map_err(|e| format!("bad configuration: {e}"))?;
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        if let Some(addr) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
            let addr = listener.local_addr().unwrap_or(addr);
            tracing::info!(target: "relay", %addr, "metrics on /metrics");
            let shared = snapshot.clone();
            tokio::spawn(telemetry::serve_metrics(listener, move || {
                let snapshot = *shared.lock().unwrap_or_else(PoisonError::into_inner);
                snapshot.render()
            }));
        }
        let measure = move |server: &Server, traffic: &_| {
            let fresh = Snapshot::of(server, traffic);
            *snapshot.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        };
        if args.metrics_listen.is_some() {
            relay_sim::runtime::run_measured(
                &net,
                server,
                args.listen,
                telemetry::shutdown_signal(),
                METRICS_REFRESH,
                measure,
            )
            .await
        } else {
            relay_sim::runtime::run(&net, server, args.listen, telemetry::shutdown_signal()).await
        }
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
}
