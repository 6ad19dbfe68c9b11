//! `portal admin`: the admin API from the command line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Subcommand;
use node_proto::ids::{ClientId, GatewayId, RelayId, ResourceId};
use node_proto::portal::{IpNetwork, ResourceAddress, CLIENT_TUNNEL_IPV4, CLIENT_TUNNEL_IPV6};
use portal_sim::directory::{Change, Client, DirectoryView, Gateway, TokenDigest};
use portal_sim::seed::{PolicySeed, RelaySeed, ResourceSeed};
use rand::RngCore as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The portal's admin API.
    #[arg(
        long,
        env = "PORTAL_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    url: String,
    /// Its bearer token (`--admin-token` of the portal).
    #[arg(long, env = "PORTAL_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// A CA certificate (PEM) to trust for an `https://` URL, instead of the system's.
    #[arg(long, env = "PORTAL_ADMIN_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

/// An id as `3` or with its prefix (`c3`, `g3`, `r3`, `relay3`).
fn id(prefix: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |s: &str| {
        s.strip_prefix(prefix)
            .unwrap_or(s)
            .parse()
            .map_err(|_| format!("not an id: {s:?} (a number, or {prefix}<number>)"))
    }
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Shows the directory: clients, gateways, resources, policies, relays.
    List {
        /// As the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adds a client and prints its token (shown once: only its digest is kept).
    AddClient {
        /// For operators.
        #[arg(long)]
        name: String,
        /// Its id; the next free one if absent.
        #[arg(long, value_parser = id("c"))]
        id: Option<u64>,
        /// Its IPv4 tunnel address; 100.64.0.0 + id if absent.
        #[arg(long)]
        ipv4: Option<Ipv4Addr>,
        /// Its IPv6 tunnel address; fd00:2021:1111:: + id if absent.
        #[arg(long)]
        ipv6: Option<Ipv6Addr>,
    },
    /// Removes a client: its sessions end, its policies go.
    RemoveClient {
        /// Which.
        #[arg(value_parser = id("c"))]
        id: u64,
    },
    /// Ends a client's sessions: its tunnels close and it must be authorized again.
    EndSessions {
        /// Whose.
        #[arg(value_parser = id("c"))]
        id: u64,
    },
    /// Adds a gateway and prints its token (shown once).
    AddGateway {
        /// For operators.
        #[arg(long)]
        name: String,
        /// The site it serves: the resources of that site are reached through it.
        #[arg(long)]
        site: String,
        /// Its id; the next free one if absent.
        #[arg(long, value_parser = id("g"))]
        id: Option<u64>,
    },
    /// Removes a gateway.
    RemoveGateway {
        /// Which.
        #[arg(value_parser = id("g"))]
        id: u64,
    },
    /// Adds or changes a resource: one host (`--host`) or a range (`--cidr`).
    AddResource {
        /// A human-readable name.
        #[arg(long)]
        name: String,
        /// The site whose gateways reach it.
        #[arg(long)]
        site: String,
        /// A single address.
        #[arg(long, conflicts_with = "cidr", required_unless_present = "cidr")]
        host: Option<std::net::IpAddr>,
        /// A range, e.g. 10.0.0.0/24.
        #[arg(long)]
        cidr: Option<IpNetwork>,
        /// Its id; the next free one if absent.
        #[arg(long, value_parser = id("r"))]
        id: Option<u64>,
    },
    /// Removes a resource and its policies.
    RemoveResource {
        /// Which.
        #[arg(value_parser = id("r"))]
        id: u64,
    },
    /// Lets a client reach a resource.
    AddPolicy {
        /// Who.
        #[arg(long, value_parser = id("c"))]
        client: u64,
        /// What.
        #[arg(long, value_parser = id("r"))]
        resource: u64,
        /// How long one authorization lasts ("8h", "30m"); the portal's default if absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Takes a client's access to a resource away, at once.
    RemovePolicy {
        /// Who.
        #[arg(long, value_parser = id("c"))]
        client: u64,
        /// What.
        #[arg(long, value_parser = id("r"))]
        resource: u64,
    },
    /// Adds or moves a relay.
    AddRelay {
        /// Where it listens (UDP).
        #[arg(long)]
        address: SocketAddr,
        /// Its id; the next free one if absent.
        #[arg(long, value_parser = id("relay"))]
        id: Option<u64>,
    },
    /// Removes a relay.
    RemoveRelay {
        /// Which.
        #[arg(value_parser = id("relay"))]
        id: u64,
    },
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        match &args.ca {
            Some(ca) => {
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("cannot read {}", ca.display()))?
                {
                    roots.add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A system certificate rustls cannot use is not ours to fail on.
                    let _ = roots.add(cert);
                }
            }
        }
        // ring, as the rest of the build uses (see the nodes' connector).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            url: args.url.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        })
    }

    async fn answer(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("the portal answered {status} without JSON"))?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no reason given");
            bail!("refused ({status}): {message}");
        }
        Ok(body)
    }

    async fn directory(&self) -> anyhow::Result<DirectoryView> {
        let response = self
            .http
            .get(format!("{}/v1/directory", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        Ok(serde_json::from_value(Self::answer(response).await?)?)
    }

    async fn change(&self, change: &Change) -> anyhow::Result<i64> {
        let response = self
            .http
            .post(format!("{}/v1/changes", self.url))
            .bearer_auth(&self.token)
            .json(change)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        let body = Self::answer(response).await?;
        body["change_id"]
            .as_i64()
            .context("the portal's answer has no change id")
    }
}

/// A new node token: 32 bytes from the OS RNG, URL-safe base64.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn next_id(ids: impl Iterator<Item = u64>) -> u64 {
    ids.max().map_or(1, |max| max + 1)
}

pub(crate) fn run(args: AdminArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(command(args))
}

async fn command(args: AdminArgs) -> anyhow::Result<()> {
    let api = Api::new(&args)?;
    let change = match args.command {
        AdminCommand::List { json } => {
            let view = api.directory().await?;
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&view)?)
            } else {
                directory_text(&view)
            };
            // A reader that stops early (`| grep -q`, `| head`) is not an error.
            let mut out = std::io::stdout().lock();
            return match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => Ok(other?),
            };
        }
        AdminCommand::AddClient {
            name,
            id,
            ipv4,
            ipv6,
        } => {
            let id = match id {
                Some(id) => id,
                None => next_id(api.directory().await?.clients.iter().map(|c| c.id.0)),
            };
            let ipv4 = match ipv4 {
                Some(ip) => ip,
                None => tunnel_ipv4(id)?,
            };
            let ipv6 = match ipv6 {
                Some(ip) => ip,
                None => tunnel_ipv6(id)?,
            };
            let token = new_token();
            let client = Client {
                id: ClientId(id),
                name,
                token: TokenDigest::of(token.as_bytes()),
                ipv4,
                ipv6,
            };
            api.change(&Change::AddClient { client }).await?;
            println!("client c{id} added, tunnel addresses {ipv4} and {ipv6}");
            println!("token (shown once; the client's ZTA_TOKEN): {token}");
            return Ok(());
        }
        AdminCommand::AddGateway { name, site, id } => {
            let id = match id {
                Some(id) => id,
                None => next_id(api.directory().await?.gateways.iter().map(|g| g.id.0)),
            };
            let token = new_token();
            let gateway = Gateway {
                id: GatewayId(id),
                name,
                token: TokenDigest::of(token.as_bytes()),
                site,
            };
            api.change(&Change::AddGateway { gateway }).await?;
            println!("gateway g{id} added");
            println!("token (shown once; the gateway's ZTA_TOKEN): {token}");
            return Ok(());
        }
        AdminCommand::RemoveClient { id } => Change::RemoveClient { id: ClientId(id) },
        AdminCommand::EndSessions { id } => Change::EndSessions {
            client_id: ClientId(id),
        },
        AdminCommand::RemoveGateway { id } => Change::RemoveGateway { id: GatewayId(id) },
        AdminCommand::AddResource {
            name,
            site,
            host,
            cidr,
            id,
        } => {
            let id = match id {
                Some(id) => id,
                None => next_id(api.directory().await?.resources.iter().map(|r| r.id.0)),
            };
            let address = match (host, cidr) {
                (Some(address), _) => ResourceAddress::Host { address },
                (None, Some(address)) => ResourceAddress::Cidr { address },
                (None, None) => bail!("a resource needs --host or --cidr"),
            };
            Change::AddResource {
                resource: ResourceSeed {
                    id: ResourceId(id),
                    name,
                    site,
                    address,
                },
            }
        }
        AdminCommand::RemoveResource { id } => Change::RemoveResource { id: ResourceId(id) },
        AdminCommand::AddPolicy {
            client,
            resource,
            duration,
        } => Change::AddPolicy {
            policy: PolicySeed {
                client_id: ClientId(client),
                resource_id: ResourceId(resource),
                duration_secs: duration.map(|d| d.as_secs().max(1)),
            },
        },
        AdminCommand::RemovePolicy { client, resource } => Change::RemovePolicy {
            client_id: ClientId(client),
            resource_id: ResourceId(resource),
        },
        AdminCommand::AddRelay { address, id } => {
            let id = match id {
                Some(id) => id,
                None => next_id(api.directory().await?.relays.iter().map(|r| r.id.0)),
            };
            Change::AddRelay {
                relay: RelaySeed {
                    id: RelayId(id),
                    address,
                },
            }
        }
        AdminCommand::RemoveRelay { id } => Change::RemoveRelay { id: RelayId(id) },
    };
    let change_id = api.change(&change).await?;
    println!("done (change {change_id})");
    Ok(())
}

/// The client range's `id`th address.
fn tunnel_address(range: IpNetwork, id: u64) -> anyhow::Result<std::net::IpAddr> {
    let width = if range.addr().is_ipv4() { 32 } else { 128 };
    let host_bits = width - u32::from(range.prefix());
    if id == 0 || (host_bits < 64 && id >= 1u64 << host_bits) {
        bail!("no tunnel address in {range} for id {id}: give one");
    }
    Ok(match range.addr() {
        std::net::IpAddr::V4(base) => Ipv4Addr::from(u32::from(base) + u32::try_from(id)?).into(),
        std::net::IpAddr::V6(base) => Ipv6Addr::from(u128::from(base) + u128::from(id)).into(),
    })
}

fn tunnel_ipv4(id: u64) -> anyhow::Result<Ipv4Addr> {
    match tunnel_address(CLIENT_TUNNEL_IPV4, id)? {
        std::net::IpAddr::V4(ip) => Ok(ip),
        std::net::IpAddr::V6(_) => bail!("the client IPv4 range is not IPv4"),
    }
}

fn tunnel_ipv6(id: u64) -> anyhow::Result<Ipv6Addr> {
    match tunnel_address(CLIENT_TUNNEL_IPV6, id)? {
        std::net::IpAddr::V6(ip) => Ok(ip),
        std::net::IpAddr::V4(_) => bail!("the client IPv6 range is not IPv6"),
    }
}

fn directory_text(view: &DirectoryView) -> String {
    // Writing to a String cannot fail.
    let mut out = String::new();
    let _ = writeln!(out, "clients:");
    for c in &view.clients {
        let _ = writeln!(out, "  {}  {:<20} {} {}", c.id, c.name, c.ipv4, c.ipv6);
    }
    let _ = writeln!(out, "gateways:");
    for g in &view.gateways {
        let _ = writeln!(out, "  {}  {:<20} site {}", g.id, g.name, g.site);
    }
    let _ = writeln!(out, "resources:");
    for r in &view.resources {
        let _ = writeln!(
            out,
            "  {}  {:<20} site {} {}",
            r.id,
            r.name,
            r.site,
            r.address.network()
        );
    }
    let _ = writeln!(out, "policies:");
    for p in &view.policies {
        let duration = p.duration_secs.map_or("default".to_owned(), |s| {
            humantime::format_duration(Duration::from_secs(s)).to_string()
        });
        let _ = writeln!(out, "  {} -> {}  ({duration})", p.client_id, p.resource_id);
    }
    let _ = writeln!(out, "relays:");
    for r in &view.relays {
        let _ = writeln!(out, "  relay{}  {}", r.id.0, r.address);
    }
    out
}
