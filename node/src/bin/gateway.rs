//! `gateway`: admits authorized clients' traffic to the resource network behind it, through a
//! TUN device.
//!
//! Packets from clients leave the TUN device with the client's tunnel address as their source
//! and the kernel forwards them (IP forwarding is switched on at start unless
//! `--no-enable-forwarding`). Replies must come back: either masquerade the client range on the
//! resource-facing interface (`iptables -t nat -A POSTROUTING -s 100.64.0.0/10 -o eth1 -j
//! MASQUERADE`, what the e2e test does), or route the client ranges to this host on the resource
//! network.

use std::collections::BTreeSet;
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
use node_core::engine::{EngineEvent, GatewayEngine};
use node_core::portal::{IpNetwork, CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6};
use node_core::state::{GatewayEvent, GatewayState};

/// zta gateway: forwards authorized clients' packets to the resources behind it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Name of the TUN device (created at start, removed at exit).
    #[arg(long, env = "ZTA_TUN_NAME", default_value = "zta-gateway")]
    tun_name: String,
    /// The clients' tunnel address ranges (the portal's), routed into the TUN device;
    /// comma-separated.
    #[arg(
        long,
        env = "ZTA_CLIENT_RANGES",
        value_delimiter = ',',
        default_values_t = [CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6]
    )]
    client_ranges: Vec<IpNetwork>,
    /// Leave the kernel's IP forwarding settings alone (by default the gateway switches on
    /// `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding`).
    #[arg(long, env = "ZTA_NO_ENABLE_FORWARDING")]
    no_enable_forwarding: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = telemetry::init_logging(&args.common.log, args.common.log_json) {
        eprintln!("gateway: {error:#}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn enable_forwarding() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("cannot enable IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")?;
    if let Err(error) = std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1") {
        tracing::warn!(%error, "cannot enable IPv6 forwarding");
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    let common = args.common;
    let endpoint = cli::portal_endpoint(
        &common.portal_url,
        "gateway",
        &common.token,
        common.insecure_no_tls,
    )?;
    let secrets = Secrets::load(common.seed, &common.state_dir("gateway"))?;
    let connector = common.portal_connector(&endpoint)?;
    if !args.no_enable_forwarding {
        enable_forwarding()?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let metrics = NodeMetrics::new("gateway");
        cli::serve_metrics(common.metrics_listen, &metrics).await?;
        let socket = runtime::bind_host_socket(common.listen, &endpoint.connect).await?;
        let addresses = cli::local_addresses(socket.local_addr()?, &common.advertise);
        let mut device = TunDevice::create(&args.tun_name, common.mtu)
            .with_context(|| format!("cannot create the TUN device {:?} (root or CAP_NET_ADMIN needed)", args.tun_name))?;
        let mut config = TunConfig::new(device.name());
        config.set_routes(&args.client_ranges.iter().copied().collect::<BTreeSet<_>>());
        let crypto = common.crypto_pool()?;
        tracing::info!(?addresses, device = device.name(), portal = %endpoint.connect, crypto_threads = crypto.threads(), "Gateway starting");

        let now = TokioClock.now();
        // The one wall-clock read: it maps the portal's unix expiry times onto instants.
        #[allow(clippy::disallowed_methods)]
        let wall = SystemTime::now();
        let mut tunnel = match &secrets {
            Secrets::Random { private_key, rng_seed } => {
                GatewayState::from_secrets(private_key.clone(), *rng_seed, now, wall)
            }
            Secrets::Seeded(seed) => GatewayState::new(*seed, now, wall),
        };
        for addr in addresses {
            tunnel.add_local_address(addr, now);
        }
        let engine = GatewayEngine::new(tunnel, "gateway", secrets.jitter_seed());
        let fatal = Fatal::default();
        let raise = fatal.clone();
        let events = metrics.clone();
        let handle = move |event: EngineEvent<GatewayEvent>| match event {
            EngineEvent::Tunnel(GatewayEvent::ClientConnected(client)) => {
                events.connection_established();
                tracing::info!(%client, "Client connected");
            }
            EngineEvent::Tunnel(GatewayEvent::ClientDisconnected { client, reason }) => {
                events.connection_failed(reason);
                tracing::info!(%client, ?reason, "Client disconnected");
            }
            EngineEvent::Tunnel(GatewayEvent::FlowEnded { client, resource, reason }) => {
                tracing::info!(%client, %resource, ?reason, "Flow ended");
            }
            EngineEvent::PortalConnected => tracing::info!("Portal connected"),
            EngineEvent::PortalDisconnected(reason) => {
                tracing::warn!(%reason, "Portal disconnected, reconnecting");
            }
            EngineEvent::PortalFatal(reason) => raise.raise(reason),
        };
        let engine = Observed::new(engine, move |engine: &mut GatewayEngine| {
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
    })
}
