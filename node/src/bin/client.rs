//! `client`: puts the resources a user may reach behind a TUN device and tunnels their traffic to
//! the gateways that serve them.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::Parser;
use node::cli::{self, CommonArgs};
use node::identity::Secrets;
use node::runtime::metrics::{self, Metered, NodeMetrics, Traffic};
use node::runtime::{
    self, Clock as _, DatagramSocket as _, Fatal, HostAddresses, Observed, TokioClock, TunConfig,
    TunDevice, WebSocketLink,
};
use node_core::engine::{ClientEngine, EngineEvent};
use node_core::state::{ClientEvent, ClientState};

/// zta client: reach the resources the portal authorizes, through a TUN device.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Name of the TUN device (created at start, removed at exit).
    #[arg(long, env = "ZTA_TUN_NAME", default_value = "zta-client")]
    tun_name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = telemetry::init_logging(&args.common.log, args.common.log_json) {
        eprintln!("client: {error:#}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("client: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let common = args.common;
    let endpoint = cli::portal_endpoint(
        &common.portal_url,
        "client",
        &common.token,
        common.insecure_no_tls,
    )?;
    let secrets = Secrets::load(common.seed, &common.state_dir("client"))?;
    let connector = common.portal_connector(&endpoint)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let metrics = NodeMetrics::new("client");
        cli::serve_metrics(common.metrics_listen, &metrics).await?;
        let socket = runtime::bind_host_socket(common.listen, &endpoint.connect).await?;
        let addresses = cli::local_addresses(socket.local_addr()?, &common.advertise);
        let mut device = TunDevice::create(&args.tun_name, common.mtu)
            .with_context(|| format!("cannot create the TUN device {:?} (root or CAP_NET_ADMIN needed)", args.tun_name))?;
        let crypto = common.crypto_pool()?;
        tracing::info!(?addresses, device = device.name(), portal = %endpoint.connect, crypto_threads = crypto.threads(), "Client starting");

        let now = TokioClock.now();
        // The one wall-clock read: handshake timestamps count from it, and a peer accepts only
        // newer ones for this key, also after a restart.
        #[allow(clippy::disallowed_methods)]
        let wall = SystemTime::now();
        let mut tunnel = match &secrets {
            Secrets::Random { private_key, rng_seed } => {
                ClientState::from_secrets(private_key.clone(), *rng_seed, now)
            }
            Secrets::Seeded(seed) => ClientState::new(*seed, now),
        }
        .with_wall_clock(now, wall);
        for addr in addresses {
            tunnel.add_local_address(addr, now);
        }
        let engine = ClientEngine::new(tunnel, "client", secrets.jitter_seed());
        let mut config = TunConfig::new(device.name());
        let fatal = Fatal::default();
        let raise = fatal.clone();
        let events = metrics.clone();
        let mut handle = move |event: EngineEvent<ClientEvent>| match event {
            EngineEvent::Tunnel(ClientEvent::InterfaceUpdated(interface)) => {
                config.set_interface(interface);
            }
            EngineEvent::Tunnel(ClientEvent::RoutesUpdated(routes)) => config.set_routes(&routes),
            EngineEvent::Tunnel(ClientEvent::GatewayConnected(gateway)) => {
                events.connection_established();
                tracing::info!(%gateway, "Gateway connected");
            }
            EngineEvent::Tunnel(ClientEvent::GatewayDisconnected { gateway, reason }) => {
                events.connection_failed(reason);
                tracing::info!(%gateway, ?reason, "Gateway disconnected");
            }
            EngineEvent::PortalConnected => tracing::info!("Portal connected"),
            EngineEvent::PortalDisconnected(reason) => {
                tracing::warn!(%reason, "Portal disconnected, reconnecting");
            }
            EngineEvent::PortalFatal(reason) => raise.raise(reason),
        };
        let engine = Observed::new(engine, move |engine: &mut ClientEngine| {
            while let Some(event) = engine.poll_event() {
                handle(event);
            }
        });
        let period = common.metrics_listen.map(|_| metrics::REFRESH);
        let refresh = move |engine: &Observed<_, _>, traffic: &Traffic| {
            metrics.update(engine.engine(), traffic);
        };
        let mut engine = Metered::new(engine, period, TokioClock.now(), refresh);
        let mut link = WebSocketLink::new(connector, endpoint.url);
        let host = HostAddresses {
            toward: endpoint.connect.clone(),
            addresses: |host| cli::local_addresses(host, &common.advertise),
        };
        runtime::drive(&mut engine, &socket, &host, &mut device, &mut link, &crypto, &fatal).await
        // The TUN device, its addresses and routes go when `device` is dropped here.
    })
}
