//! What the `client` and `gateway` binaries share: their common options, logging, the portal
//! endpoint and the local addresses they advertise. The runtime they drive (socket, device,
//! event loop) is [`crate::runtime`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;

use crate::runtime::metrics::NodeMetrics;

/// Options of both binaries.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The portal, `wss://host[:port]` (the path and token are added). Its certificate is
    /// checked against the system's trust store and `--ca-file`; an invalid one stops the node.
    #[arg(long, env = "ZTA_PORTAL_URL")]
    pub portal_url: String,
    /// PEM certificates of a private certificate authority to trust for the portal, besides the
    /// system's.
    #[arg(long, env = "ZTA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow `ws://` (no TLS) to a portal that is not on a loopback address: the token and the
    /// portal's messages then travel in the clear. For labs and trusted networks only.
    #[arg(long, env = "ZTA_INSECURE_NO_TLS")]
    pub insecure_no_tls: bool,
    /// The token this node connects to the portal with (from the portal's seed file).
    #[arg(long, env = "ZTA_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Local address of the UDP socket for the tunnels (STUN, TURN, WireGuard). IPv4 only.
    #[arg(long, env = "ZTA_LISTEN", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// More addresses to advertise to peers as host candidates (`IP` with the bound port, or
    /// `IP:PORT`, e.g. a port forwarded to us on a NAT), comma-separated. Always advertised: the
    /// listen address, or when its IP is unspecified the address of the interface that routes
    /// to the portal.
    #[arg(long, env = "ZTA_ADVERTISE", value_delimiter = ',', value_parser = parse_advertise)]
    pub advertise: Vec<Advertise>,
    /// MTU of the TUN device (the path must carry it plus 64 bytes of IPv4, UDP, WireGuard
    /// and TURN overhead).
    #[arg(long, env = "ZTA_TUN_MTU", default_value_t = 1280,
          value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub mtu: u16,
    /// Threads that encrypt and decrypt data packets; 1 keeps the crypto on the event loop's
    /// thread. Default: the cores this process may run on when there are 4 or more, else 1.
    #[arg(long, env = "ZTA_CRYPTO_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub crypto_threads: Option<u16>,
    /// Log filter (tracing-subscriber `EnvFilter` syntax), e.g. `info,node=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, env = "ZTA_LOG_JSON")]
    pub log_json: bool,
    /// Serve Prometheus metrics (OpenMetrics text) on `http://ADDR/metrics`, e.g.
    /// `127.0.0.1:9102`. Off by default; the endpoint has no authentication, so keep it on a
    /// private address.
    #[arg(long, value_name = "ADDR", env = "ZTA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the node keeps its WireGuard private key (file `private-key`, mode 0600, created on
    /// the first start), so that its identity survives restarts. Default
    /// `/var/lib/zta/<client|gateway>`.
    #[arg(long, env = "ZTA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// For tests only: derive the WireGuard key and every random choice from this number
    /// instead of the OS's random source (64 bits: predictable); the state directory is then
    /// neither read nor written.
    #[arg(long, env = "ZTA_SEED")]
    pub seed: Option<u64>,
}

/// An address to advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertise {
    /// This IP with the port the socket is bound to.
    Ip(IpAddr),
    /// Exactly this address.
    Socket(SocketAddr),
}

fn parse_advertise(s: &str) -> Result<Advertise, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Advertise::Socket(addr));
    }
    s.parse::<IpAddr>()
        .map(Advertise::Ip)
        .map_err(|_| format!("{s:?} is neither an IP address nor IP:PORT"))
}

impl CommonArgs {
    /// The connector to the portal `endpoint`: TLS with the trusted roots for `wss://`.
    pub fn portal_connector(
        &self,
        endpoint: &PortalEndpoint,
    ) -> anyhow::Result<crate::runtime::PortalConnector> {
        if !endpoint.tls {
            return Ok(crate::runtime::PortalConnector::plain(
                endpoint.connect.clone(),
            ));
        }
        let roots = crate::runtime::root_certificates(self.ca_file.as_deref())?;
        anyhow::ensure!(
            !roots.is_empty(),
            "no trusted certificate authority: the system's store is empty and no --ca-file"
        );
        crate::runtime::PortalConnector::tls(endpoint.connect.clone(), &endpoint.host, roots)
    }

    /// The threads for the crypto (`--crypto-threads`, or one per core available).
    pub fn crypto_pool(&self) -> anyhow::Result<crate::runtime::CryptoPool> {
        let threads = match self.crypto_threads {
            Some(n) => usize::from(n),
            None => default_crypto_threads(
                // The cores of the process's affinity mask (taskset, cgroups), not the
                // machine's.
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ),
        };
        crate::runtime::CryptoPool::new(threads).context("cannot start the crypto threads")
    }

    /// The state directory: `--state-dir`, or `/var/lib/zta/<role>`.
    pub fn state_dir(&self, role: &str) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/zta").join(role))
    }
}

/// Crypto threads for a process that may run on `cores` cores, unless told otherwise.
///
/// Crypto threads only pay when cores are free for them. With two, the peers and the traffic
/// they carry (the kernel's stack, the applications) keep both busy: the throughput benchmark
/// measured 1.74 to 1.87 Gbit/s with two crypto threads against 2.43 to 2.78 with the crypto on
/// the loop, as a thread waiting for the next batch (spinning briefly, since waking a sleeping
/// one costs as much as a batch) takes time the others need. With cores to spare the same
/// pipeline did 1.49 times the packets on two threads (`cargo bench -p harness --bench
/// crypto_threads`).
fn default_crypto_threads(cores: usize) -> usize {
    if cores >= 4 {
        cores
    } else {
        1
    }
}

/// Starts the `/metrics` endpoint on `--metrics-listen`, if given, serving `metrics`. Must run
/// inside a tokio runtime; the endpoint runs on its own tasks until the runtime ends.
pub async fn serve_metrics(
    listen: Option<SocketAddr>,
    metrics: &NodeMetrics,
) -> anyhow::Result<()> {
    let Some(addr) = listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "Metrics on /metrics");
    let metrics = metrics.clone();
    tokio::spawn(telemetry::serve_metrics(listener, move || metrics.render()));
    Ok(())
}

/// Where to reach the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalEndpoint {
    /// `host:port` to open TCP to.
    pub connect: String,
    /// The host, without brackets or port: the name the portal's certificate must carry.
    pub host: String,
    /// Whether the WebSocket runs over TLS (`wss://`).
    pub tls: bool,
    /// The WebSocket URL, with the node's path and token.
    pub url: String,
}

/// The portal endpoint of a node with `role` (`client` or `gateway`) and `token`, from the base
/// URL given by the user: `wss://` (TLS), or `ws://` only to a loopback address or with
/// `insecure` (`--insecure-no-tls`), since the token and every key exchange would travel in
/// the clear.
pub fn portal_endpoint(
    base: &str,
    role: &str,
    token: &str,
    insecure: bool,
) -> anyhow::Result<PortalEndpoint> {
    let (tls, rest) = if let Some(rest) = base.strip_prefix("wss://") {
        (true, rest)
    } else if let Some(rest) = base.strip_prefix("ws://") {
        (false, rest)
    } else {
        anyhow::bail!("--portal-url {base:?} must start with wss:// (or ws:// without TLS)");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        anyhow::bail!("--portal-url {base:?} has no host");
    }
    // A bracketed IPv6 literal holds colons of its own.
    let (host, has_port) = match authority.rfind(']') {
        Some(end) => (
            authority[..end].trim_start_matches('['),
            authority[end..].contains(':'),
        ),
        None => (
            authority.split(':').next().unwrap_or_default(),
            authority.contains(':'),
        ),
    };
    let connect = match (has_port, tls) {
        (true, _) => authority.to_owned(),
        (false, true) => format!("{authority}:443"),
        (false, false) => format!("{authority}:80"),
    };
    if !tls && !insecure && !is_loopback(host) {
        anyhow::bail!(
            "--portal-url {base:?}: ws:// sends the token unencrypted; use wss://, or pass \
             --insecure-no-tls on a network you trust"
        );
    }
    if token.is_empty() {
        anyhow::bail!("--token is empty");
    }
    let scheme = if tls { "wss" } else { "ws" };
    Ok(PortalEndpoint {
        url: format!(
            "{scheme}://{authority}/{role}/websocket?token={}",
            node_core::portal::url::percent_encode(token)
        ),
        host: host.to_owned(),
        tls,
        connect,
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host candidates of a socket whose host address is `host`: that one, then the `--advertise`
/// ones (an IP alone takes the port of `host`).
pub fn local_addresses(host: SocketAddr, advertise: &[Advertise]) -> Vec<SocketAddr> {
    let port = host.port();
    let mut addrs = vec![host];
    for addr in advertise.iter().map(|a| match *a {
        Advertise::Ip(ip) => SocketAddr::new(ip, port),
        Advertise::Socket(addr) => addr,
    }) {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{bind_host_socket, DatagramSocket as _};

    #[test]
    fn portal_endpoint_adds_path_token_and_port() {
        let e = portal_endpoint("wss://portal.example.net", "client", "a b&c", false).unwrap();
        assert!(e.tls);
        assert_eq!(e.connect, "portal.example.net:443");
        assert_eq!(e.host, "portal.example.net");
        assert_eq!(
            e.url,
            "wss://portal.example.net/client/websocket?token=a%20b%26c"
        );
        let e = portal_endpoint("wss://192.0.2.10:8443/", "gateway", "t", false).unwrap();
        assert_eq!(
            (e.connect.as_str(), e.host.as_str()),
            ("192.0.2.10:8443", "192.0.2.10")
        );
        let e = portal_endpoint("ws://192.0.2.10:8080", "client", "t", true).unwrap();
        assert!(!e.tls);
        assert_eq!(e.url, "ws://192.0.2.10:8080/client/websocket?token=t");
        let e = portal_endpoint("ws://portal.example.net/", "gateway", "t", true).unwrap();
        assert_eq!(e.connect, "portal.example.net:80");
        let e = portal_endpoint("wss://[2001:db8::1]", "client", "t", false).unwrap();
        assert_eq!(
            (e.connect.as_str(), e.host.as_str()),
            ("[2001:db8::1]:443", "2001:db8::1")
        );
    }

    #[test]
    fn plain_websockets_only_to_loopback_unless_insecure() {
        for local in [
            "ws://127.0.0.1:8080",
            "ws://localhost:8080",
            "ws://[::1]:8080",
        ] {
            assert!(
                portal_endpoint(local, "client", "t", false).is_ok(),
                "{local}"
            );
        }
        let error = portal_endpoint("ws://192.0.2.10:8080", "client", "t", false).unwrap_err();
        assert!(error.to_string().contains("--insecure-no-tls"), "{error}");
        assert!(portal_endpoint("ws://192.0.2.10:8080", "client", "t", true).is_ok());
    }

    #[test]
    fn portal_endpoint_refuses_bad_urls() {
        for bad in ["http://x:1", "ws://", "wss://", "x:8080"] {
            assert!(portal_endpoint(bad, "client", "t", true).is_err(), "{bad}");
        }
        assert!(portal_endpoint("wss://x:1", "client", "", false).is_err());
    }

    #[test]
    fn advertise_takes_ips_and_socket_addresses() {
        assert_eq!(
            parse_advertise("203.0.113.7").unwrap(),
            Advertise::Ip("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            parse_advertise("203.0.113.7:4000").unwrap(),
            Advertise::Socket("203.0.113.7:4000".parse().unwrap())
        );
        assert!(parse_advertise("example.net").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unspecified_bind_reports_the_address_towards_the_portal() {
        let socket = bind_host_socket("0.0.0.0:0".parse().unwrap(), "127.0.0.1:9")
            .await
            .unwrap();
        let host = socket.local_addr().unwrap();
        assert_eq!(host.ip(), IpAddr::from([127, 0, 0, 1]));
        assert_ne!(host.port(), 0);
        let extra = [
            Advertise::Ip("203.0.113.7".parse().unwrap()),
            Advertise::Socket("203.0.113.8:4000".parse().unwrap()),
            Advertise::Ip(host.ip()),
        ];
        assert_eq!(
            local_addresses(host, &extra),
            vec![
                host,
                SocketAddr::new("203.0.113.7".parse().unwrap(), host.port()),
                "203.0.113.8:4000".parse().unwrap(),
            ]
        );
    }
}
