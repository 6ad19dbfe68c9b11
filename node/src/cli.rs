//! What the `client` and `gateway` binaries share: their common options, logging, the portal
//! endpoint and the local addresses they advertise. The runtime they drive (socket, device,
//! event loop) is [`crate::runtime`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

/// Options of both binaries.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The portal, `ws://host:port` (the path and token are added). TLS (`wss://`) is not
    /// supported yet: put the portal behind a TLS-terminating tunnel or keep it on a trusted
    /// network.
    #[arg(long, env = "ZTA_PORTAL_URL")]
    pub portal_url: String,
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
    /// Log filter (tracing-subscriber `EnvFilter` syntax), e.g. `info,node=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, env = "ZTA_LOG_JSON")]
    pub log_json: bool,
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
    /// The state directory: `--state-dir`, or `/var/lib/zta/<role>`.
    pub fn state_dir(&self, role: &str) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/zta").join(role))
    }
}

/// Installs the global log subscriber, on standard error.
pub fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid --log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Where to reach the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalEndpoint {
    /// `host:port` to open TCP to.
    pub connect: String,
    /// The WebSocket URL, with the node's path and token.
    pub url: String,
}

/// The portal endpoint of a node with `role` (`client` or `gateway`) and `token`, from the base
/// URL given by the user.
pub fn portal_endpoint(base: &str, role: &str, token: &str) -> anyhow::Result<PortalEndpoint> {
    if base.starts_with("wss://") {
        anyhow::bail!("--portal-url {base:?}: TLS (wss://) is not supported yet, use ws://");
    }
    let rest = base
        .strip_prefix("ws://")
        .with_context(|| format!("--portal-url {base:?} must start with ws://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        anyhow::bail!("--portal-url {base:?} has no host");
    }
    // A bracketed IPv6 literal holds colons of its own.
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let connect = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    if token.is_empty() {
        anyhow::bail!("--token is empty");
    }
    Ok(PortalEndpoint {
        url: format!(
            "ws://{authority}/{role}/websocket?token={}",
            node_core::portal::url::percent_encode(token)
        ),
        connect,
    })
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
        let e = portal_endpoint("ws://192.0.2.10:8080", "client", "a b&c").unwrap();
        assert_eq!(e.connect, "192.0.2.10:8080");
        assert_eq!(
            e.url,
            "ws://192.0.2.10:8080/client/websocket?token=a%20b%26c"
        );
        let e = portal_endpoint("ws://portal.example.net/", "gateway", "t").unwrap();
        assert_eq!(e.connect, "portal.example.net:80");
        assert_eq!(e.url, "ws://portal.example.net/gateway/websocket?token=t");
        let e = portal_endpoint("ws://[2001:db8::1]", "client", "t").unwrap();
        assert_eq!(e.connect, "[2001:db8::1]:80");
    }

    #[test]
    fn portal_endpoint_refuses_bad_urls() {
        for bad in ["wss://x", "http://x:1", "ws://", "x:8080"] {
            assert!(portal_endpoint(bad, "client", "t").is_err(), "{bad}");
        }
        assert!(portal_endpoint("ws://x:1", "client", "").is_err());
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
