//! `portal`: the control plane on a WebSocket, its database, and its admin CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portal_sim::replica::Replica;
use portal_sim::server::{system_clock, Server};
use portal_sim::store::{import, SqlStore, Store as _};
use portal_sim::{Portal, PortalConfig, PortalMetrics, SeedFile};

mod admin;

/// The zta control plane: decides who may reach what and introduces clients to gateways.
///
/// Without a subcommand it serves: nodes on `--listen`, the admin API on `--admin-listen`.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Adds a seed file's clients, gateways, resources, policies and relays to the database (or
    /// updates them); entries the file does not name are kept.
    Import {
        /// The seed file (JSON, see portal-sim/examples/seed.json).
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Talks to a running portal's admin API.
    Admin(admin::AdminArgs),
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    /// The database: a SQLite file (created on first start) or a `postgres://` URL (several
    /// portal instances may share one).
    #[arg(long, env = "PORTAL_DB", default_value = "portal.db")]
    db: String,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// A seed file to import at start (as `portal import`), for labs and tests.
    #[arg(long, env = "PORTAL_SEED_FILE")]
    seed_file: Option<PathBuf>,
    /// The certificate chain to serve TLS with (PEM, leaf first), for nodes (`wss://`) and the
    /// admin API (`https://`). Without it the portal speaks plain WebSocket and HTTP, for a
    /// TLS-terminating proxy in front or a lab.
    #[arg(long, env = "PORTAL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "PORTAL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Address to listen on for node WebSockets.
    #[arg(long, env = "PORTAL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address for the admin API (and `/metrics`); off without it.
    #[arg(long, env = "PORTAL_ADMIN_LISTEN", requires = "admin_token")]
    admin_listen: Option<SocketAddr>,
    /// The bearer token the admin API requires.
    #[arg(long, env = "PORTAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Address for `/metrics` alone (Prometheus text), besides the admin listener.
    #[arg(long, env = "PORTAL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How often to look for changes other portal instances made to a shared database: the
    /// bound on how late they reach this instance's nodes.
    #[arg(long, env = "PORTAL_SYNC_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    sync_interval: Duration,
    /// Secret shared with the relays, signs relay credentials.
    #[arg(
        long,
        env = "PORTAL_RELAY_SECRET",
        hide_env_values = true,
        required = true
    )]
    relay_secret: Option<String>,
    /// Seed of the RNG (PSKs, ICE credentials, gateway picks); random if absent. Every start
    /// is a new generation, so PSKs rotate across restarts even with a fixed seed.
    #[arg(long, env = "PORTAL_SEED")]
    seed: Option<u64>,
    /// Log filter (tracing-subscriber `EnvFilter` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Logs as JSON, one object per line.
    #[arg(long, env = "PORTAL_LOG_JSON")]
    log_json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Admin(args)) => admin::run(args),
        Some(Command::Import { file, db }) => {
            runtime().and_then(|rt| rt.block_on(run_import(file, db)))
        }
        None => run(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portal: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn open(db: &DbArgs) -> anyhow::Result<SqlStore> {
    SqlStore::open(&db.db)
        .await
        .with_context(|| format!("cannot open the database {}", db.db))
}

async fn run_import(file: PathBuf, db: DbArgs) -> anyhow::Result<()> {
    let seed =
        SeedFile::load(&file).with_context(|| format!("bad seed file {}", file.display()))?;
    let store = open(&db).await?;
    let committed = import(&store, &seed).await.context("import failed")?;
    println!(
        "{}: {committed} changes imported into {}",
        file.display(),
        db.db
    );
    Ok(())
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logging(&args.log, args.log_json)?;
    let relay_secret = args
        .relay_secret
        .clone()
        .context("--relay-secret is required")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(portal_sim::tls::acceptor(cert, key)?),
        _ => None,
    };
    let seed = match &args.seed_file {
        Some(file) => Some(
            SeedFile::load(file).with_context(|| format!("bad seed file {}", file.display()))?,
        ),
        None => None,
    };
    runtime()?.block_on(async {
        let store = open(&args.db).await?;
        if let Some(seed) = &seed {
            let committed = import(&store, seed).await.context("import failed")?;
            tracing::info!(committed, "Seed file imported");
        }
        let snapshot = store.load().await.context("cannot load the directory")?;

        let clock = system_clock();
        let generation = clock()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut config = PortalConfig::new(relay_secret, args.seed.unwrap_or_else(rand::random));
        config.generation = generation;
        let portal = Portal::with_directory(snapshot.directory, config);
        let server = Server::new(portal, clock);
        let replica = Arc::new(Replica::new(server.clone(), store, snapshot.last));
        let render: portal_sim::admin::RenderMetrics = {
            let server = server.clone();
            Arc::new(move || render_metrics(&server.with_portal(|p, _| p.metrics())))
        };

        if let Some(addr) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "Metrics listening");
            let render = Arc::clone(&render);
            tokio::spawn(telemetry::serve_metrics(listener, move || render()));
        }
        if let (Some(addr), Some(token)) = (args.admin_listen, &args.admin_token) {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, tls = tls.is_some(), "Admin API listening");
            let router = portal_sim::admin::router(Arc::clone(&replica), token, render);
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Err(error) = portal_sim::admin::serve(listener, tls, router).await {
                    tracing::error!(%error, "Admin API stopped");
                }
            });
        }

        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "Portal listening");
        let nodes = async {
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
        };
        tokio::select! {
            served = nodes => served,
            // Only a fall behind the change log ends it: a restart loads the directory afresh.
            behind = replica.run(args.sync_interval) => Err(behind.into()),
            () = telemetry::shutdown_signal() => Ok(()),
        }
    })
}

fn render_metrics(m: &PortalMetrics) -> String {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let mut set = telemetry::MetricSet::new("zta_portal");
    set.gauge("sockets", "Node sockets open", count(m.sockets))
        .gauge_with(
            "joined_nodes",
            "Nodes joined, by role",
            &[("role", "client")],
            count(m.joined_clients),
        )
        .gauge_with(
            "joined_nodes",
            "Nodes joined, by role",
            &[("role", "gateway")],
            count(m.joined_gateways),
        )
        .gauge(
            "flows",
            "Live flows (authorizations handed out)",
            count(m.flows),
        );
    for (kind, n) in [
        ("client", m.clients),
        ("gateway", m.gateways),
        ("resource", m.resources),
        ("policy", m.policies),
        ("relay", m.relays),
    ] {
        set.gauge_with(
            "directory_entries",
            "Entries in the directory, by kind",
            &[("kind", kind)],
            count(n),
        );
    }
    set.counter("frames_received", "Frames received from nodes", m.frames)
        .counter(
            "changes_applied",
            "Administrative changes applied",
            m.changes,
        )
        .counter(
            "relay_credential_renewals",
            "Relay credential renewals sent to joined nodes",
            m.credential_renewals,
        );
    for (reason, n) in &m.refused {
        set.counter_with(
            "frames_refused",
            "Frames refused, by the reason sent back",
            &[("reason", reason)],
            *n,
        );
    }
    set.render()
}
