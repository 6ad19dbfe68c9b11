//! `portal`: the control plane on a WebSocket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use clap::Parser;
use portal_sim::server::{system_clock, Server};
use portal_sim::{Portal, PortalConfig, SeedFile};
use tracing_subscriber::EnvFilter;

/// The zta control plane: decides who may reach what and introduces clients to gateways.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The certificate chain to serve TLS with (PEM, leaf first): nodes then connect with
    /// `wss://`. Without it the portal speaks plain WebSocket, for a TLS-terminating proxy in
    /// front or a lab.
    #[arg(long, env = "PORTAL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "PORTAL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Address to listen on for node WebSockets.
    #[arg(long, env = "PORTAL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// JSON file with clients, gateways, resources, policies and relays.
    #[arg(long, env = "PORTAL_SEED_FILE")]
    seed_file: PathBuf,
    /// Secret shared with the relays, signs relay credentials.
    #[arg(long, env = "PORTAL_RELAY_SECRET", hide_env_values = true)]
    relay_secret: String,
    /// Seed of the RNG (PSKs, ICE credentials, gateway picks); random if absent. Every start
    /// is a new generation, so PSKs rotate across restarts even with a fixed seed.
    #[arg(long, env = "PORTAL_SEED")]
    seed: Option<u64>,
    /// Log filter (tracing-subscriber `EnvFilter` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portal: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let seed_file = SeedFile::load(&args.seed_file)
        .with_context(|| format!("bad seed file {}", args.seed_file.display()))?;
    let clock = system_clock();
    let generation = clock()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut config = PortalConfig::new(args.relay_secret, args.seed.unwrap_or_else(rand::random));
    config.generation = generation;
    let portal = Portal::new(&seed_file, config);

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(portal_sim::tls::acceptor(cert, key)?),
        _ => None,
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "Portal listening");
        let server = Server::new(portal, clock);
        match tls {
            Some(tls) => {
                server
                    .serve_upgraded(listener, move |tcp| {
                        let tls = tls.clone();
                        async move { tls.accept(tcp).await }
                    })
                    .await
            }
            None => server.serve(listener).await,
        }
        .context("accept failed")
    })
}
