//! The simulated deployment: a portal, three relays (two announced, one standing by), two
//! clients behind one NAT, a gateway behind another, and the resources behind the gateway, all
//! running production code in turmoil.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use node_core::ids::{ClientId, ResourceId};
use node_core::packet::IpPacket;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use portal_sim::directory::Change;

use super::hostile::{Attack, GatewayTap};
use super::hosts::{
    client_host, client_tunnel_ip, gateway_host, portal_host, relay_host, DeviceTap, NodeHost,
    RelayTap, ResourceLog,
};
use super::model::{Proto, Side, CLIENTS, HOSTILE, LINK_SITES, NODES, RELAYS, RESOURCES};
use crate::nat::{Filtering, MappingBehaviour, NatConfig};
use crate::turmoil_net::{
    links, sim_builder, timers, Direction, Faults, LinkProfile, NatCommand, NatHandle, NatShim,
    SimSettings, Trace,
};

/// The secret portal and relays share for TURN credentials.
const RELAY_SECRET: &str = "sim-relay-secret";
/// Relay credentials last half an hour here, not the portal's default day: every case longer
/// than a quarter of an hour then sees them renewed, and one past half an hour would lose its
/// relays if renewal failed (the invariants check that no relay ever sees expired ones).
pub const RELAY_CREDENTIALS_LIFETIME: Duration = Duration::from_secs(1800);
/// The UDP port nodes bind inside their host.
const NODE_PORT: u16 = 51820;

/// The phases of a loss burst on a site's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Burst {
    /// Datagrams are copied, reordered and delayed, none lost.
    Copies,
    /// As [`Burst::Copies`], and 30 % are lost.
    Losses,
    /// The links are as before.
    Over,
}

/// The resources' addresses: a single host, a host inside a CIDR resource, another host.
pub const RESOURCE_IPS: [Ipv4Addr; RESOURCES] = [
    Ipv4Addr::new(10, 0, 0, 1),
    Ipv4Addr::new(10, 1, 0, 7),
    Ipv4Addr::new(10, 0, 0, 3),
];

const PORTAL: &str = "portal";
const RELAY_NAMES: [&str; RELAYS] = ["relay1", "relay2", "relay3"];
const NAT_C: &str = "nat-c";
const NAT_G: &str = "nat-g";
const CLIENT_NAMES: [&str; CLIENTS] = ["client1", "client2"];
const GATEWAY: &str = "gateway1";

/// How the two NATs behave; chosen from the seed so cases cover the combinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatTypes {
    /// The clients' NAT.
    pub clients: (MappingBehaviour, Filtering),
    /// The gateway's NAT.
    pub gateway: (MappingBehaviour, Filtering),
}

impl NatTypes {
    /// Whether hole punching can open a direct path between a client and the gateway, both
    /// sides sending checks to the public addresses they learnt from the relays (RFC 4787).
    ///
    /// An endpoint-independent mapping keeps the public port a relay saw for every
    /// destination, so its public address is one the other side can aim at. With both
    /// mappings independent each side's own checks open its filter for the other's, whatever
    /// the filtering. With one side's mapping dependent on the destination, that side's checks
    /// leave from a port nobody learnt: only the other side's filter can let them in, and an
    /// address-and-port-dependent one never does (its own checks went to another port). With
    /// both dependent neither side knows where to aim.
    pub fn direct_possible(&self) -> bool {
        let independent =
            |nat: (MappingBehaviour, Filtering)| nat.0 == MappingBehaviour::EndpointIndependent;
        let admits_new_ports = |nat: (MappingBehaviour, Filtering)| {
            independent(nat) && nat.1 != Filtering::AddressAndPortDependent
        };
        (independent(self.clients) && independent(self.gateway))
            || admits_new_ports(self.clients)
            || admits_new_ports(self.gateway)
    }
}

/// The deployment and the driver's handles into it.
pub struct Deployment<'a> {
    /// The turmoil simulation.
    pub sim: turmoil::Sim<'a>,
    /// The wall clock's unix seconds at the simulation's start.
    epoch: u64,
    /// Everything that happened, hashed for the determinism check.
    pub trace: Trace,
    /// The clients' devices.
    pub taps: Vec<Rc<DeviceTap>>,
    /// What reached the resources.
    pub resources: Rc<ResourceLog>,
    /// What the gateway's node reports.
    pub gateway: Rc<GatewayTap>,
    /// The NAT boxes.
    pub nats: [NatHandle; 2],
    /// The NATs' behaviour.
    pub nat_types: NatTypes,
    /// The portal's stored directory: outlives portal restarts, as a database does. Every
    /// administrative change is committed here, then applied to the running portal, as the
    /// `portal` binary's admin API does.
    store: portal_sim::store::MemoryStore,
    /// The resources as first configured, for putting a removed one back.
    resource_specs: Vec<portal_sim::seed::ResourceSeed>,
    /// The relays the portal announces.
    pub relays_announced: Rc<RefCell<BTreeSet<usize>>>,
    portal: Rc<RefCell<Option<portal_sim::server::Server>>>,
    relay_crashed: [bool; RELAYS],
    /// The faults on the relays' sockets.
    relay_faults: Vec<Faults>,
    /// What each relay holds.
    pub relay_taps: Vec<Rc<RelayTap>>,
    /// Beats at every step: a case whose simulated time stops advancing fails (see
    /// [`super::watchdog`]).
    pub heartbeat: super::watchdog::Heartbeat,
    relays: Vec<(u64, SocketAddr)>,
    /// Portal cuts to heal, by when.
    heals: Vec<(Duration, usize)>,
    /// The world's tick: skips ahead are whole ticks, so the steps that do work are the ones a
    /// tick-by-tick run takes.
    tick: Duration,
    next_payload: u64,
}

impl<'a> Deployment<'a> {
    /// Builds the world for `seed` with the initial `policies`.
    pub fn new(seed: u64, policies: BTreeSet<(usize, usize)>) -> Self {
        // Keeping every line costs memory; the hash alone decides determinism.
        let keep_lines = std::env::var_os("SIM_TRACE").is_some();
        Self::with_trace(seed, policies, keep_lines)
    }

    /// Builds the world, keeping the trace's text lines if `keep_lines`.
    pub fn with_trace(seed: u64, policies: BTreeSet<(usize, usize)>, keep_lines: bool) -> Self {
        Self::build(seed, policies, keep_lines, true)
    }

    /// [`Deployment::with_trace`], with the [`HOSTILE`] client disobeying (keeping its routes
    /// past revocations and expiries) if `disobeying`, or a client like the other.
    pub fn build(
        seed: u64,
        policies: BTreeSet<(usize, usize)>,
        keep_lines: bool,
        disobeying: bool,
    ) -> Self {
        let mut settings = SimSettings::new(seed, Duration::from_secs(24 * 3600));
        settings.latency = Duration::from_millis(10);
        let epoch = settings.unix_epoch_secs;
        crate::turmoil_net::set_driver_elapsed(Duration::ZERO);
        timers::clear();
        let mut sim = sim_builder(&settings).build();
        let trace = if keep_lines {
            Trace::with_lines()
        } else {
            Trace::new()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);

        // Addresses follow the order of first lookup.
        let mut names = vec![PORTAL];
        names.extend(RELAY_NAMES);
        names.extend([NAT_C, NAT_G]);
        names.extend(CLIENT_NAMES);
        names.push(GATEWAY);
        let ip = |sim: &turmoil::Sim<'_>, name: &str| sim.lookup(name);
        for name in &names {
            ip(&sim, name);
        }
        let ipv4 = |sim: &turmoil::Sim<'_>, name: &str| match sim.lookup(name) {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };

        let nat_types = NatTypes {
            clients: (pick_mapping(&mut rng), pick_filtering(&mut rng)),
            gateway: (pick_mapping(&mut rng), pick_filtering(&mut rng)),
        };
        let client_ips: Vec<IpAddr> = CLIENT_NAMES.iter().map(|n| ip(&sim, n)).collect();
        let nat_c = NatHandle::new(
            NAT_C,
            NatConfig::new(ip(&sim, NAT_C), client_ips)
                .mapping(nat_types.clients.0)
                .filtering(nat_types.clients.1),
            Faults::new(seed ^ 0xC),
            trace.clone(),
        );
        let nat_g = NatHandle::new(
            NAT_G,
            NatConfig::new(ip(&sim, NAT_G), [ip(&sim, GATEWAY)])
                .mapping(nat_types.gateway.0)
                .filtering(nat_types.gateway.1)
                .ports(50_000..=50_999),
            Faults::new(seed ^ 0x6),
            trace.clone(),
        );

        let relays: Vec<(u64, SocketAddr)> = RELAY_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    i as u64 + 1,
                    SocketAddr::new(ip(&sim, n), crate::turmoil_net::TURN_PORT),
                )
            })
            .collect();
        // The third relay stands by until a replacement announces it.
        let relays_announced = Rc::new(RefCell::new(BTreeSet::from([0, 1])));
        let seed_file = seed_file(&policies, &relays[..2]);
        let resource_specs = seed_file.resources.clone();
        let store = portal_sim::store::MemoryStore::new(
            portal_sim::directory::Directory::from_seed(&seed_file),
        );
        let portal: Rc<RefCell<Option<portal_sim::server::Server>>> = Rc::new(RefCell::new(None));
        let generation = Rc::new(Cell::new(0u64));
        {
            let (store, portal, generation) =
                (store.clone(), Rc::clone(&portal), Rc::clone(&generation));
            sim.host(PORTAL, move || {
                generation.set(generation.get() + 1);
                // What the previous process recorded (who owns which key) is stored state: the
                // binary stores it as it goes, the simulation when the process ends.
                if let Some(previous) = portal.borrow().as_ref() {
                    for change in previous.with_portal(|p, _| {
                        std::iter::from_fn(|| p.poll_recorded()).collect::<Vec<_>>()
                    }) {
                        let _ = store.commit_now(&change);
                    }
                }
                let mut config = portal_sim::PortalConfig::new(RELAY_SECRET, seed);
                config.generation = generation.get();
                config.relay_credentials_lifetime = RELAY_CREDENTIALS_LIFETIME;
                let state = portal_sim::Portal::with_directory(store.directory(), config);
                portal_host(state, epoch, Rc::clone(&portal))
            });
        }
        let mut relay_faults = Vec::new();
        let mut relay_taps = Vec::new();
        for (i, name) in RELAY_NAMES.iter().enumerate() {
            let public_ip = ipv4(&sim, name);
            let relay_seed = seed.wrapping_add(100 + i as u64);
            let faults = Faults::new(seed ^ (0x7E1A_0000 + i as u64));
            relay_faults.push(faults.clone());
            let tap = Rc::new(RelayTap::default());
            relay_taps.push(Rc::clone(&tap));
            sim.host(*name, move || {
                relay_host(
                    public_ip,
                    RELAY_SECRET.to_owned(),
                    relay_seed,
                    epoch,
                    faults.clone(),
                    Rc::clone(&tap),
                )
            });
        }
        {
            let nat = nat_c.clone();
            sim.host(NAT_C, move || nat.clone().run());
            let nat = nat_g.clone();
            sim.host(NAT_G, move || nat.clone().run());
        }

        let mut taps = Vec::new();
        for (i, name) in CLIENT_NAMES.iter().enumerate() {
            let tap = Rc::new(DeviceTap::default());
            taps.push(Rc::clone(&tap));
            let cfg = NodeHost {
                name: (*name).to_owned(),
                token: format!("client-token-{}", i + 1),
                seed: seed.wrapping_mul(31).wrapping_add(i as u64),
                portal: PORTAL.to_owned(),
                // Its revocations are enforced by the gateway alone.
                disobeys: disobeying && i == HOSTILE,
            };
            let inside_ip = ip(&sim, name);
            let via = nat_c.inside_addr();
            let trace = trace.clone();
            let boots = Rc::new(Cell::new(0u16));
            let roam_ports = Rc::new(Cell::new(super::hosts::ROAM_PORTS_START));
            sim.host(*name, move || {
                let (mut cfg, tap, trace) = (cfg.clone(), Rc::clone(&tap), trace.clone());
                let roam_ports = Rc::clone(&roam_ports);
                let boot = next_boot(&boots);
                let inside = SocketAddr::new(inside_ip, NODE_PORT + boot);
                cfg.seed = cfg.seed.wrapping_add(u64::from(boot) << 32);
                async move {
                    let socket = NatShim::bind(inside, via).await?;
                    client_host(cfg, socket, via, roam_ports, tap, trace, epoch).await
                }
            });
        }
        let resources = Rc::new(ResourceLog::default());
        let gateway = Rc::new(GatewayTap::default());
        {
            let cfg = NodeHost {
                name: GATEWAY.to_owned(),
                token: "gateway-token-1".to_owned(),
                seed: seed.wrapping_mul(37).wrapping_add(7),
                portal: PORTAL.to_owned(),
                disobeys: false,
            };
            let inside_ip = ip(&sim, GATEWAY);
            let via = nat_g.inside_addr();
            let (trace, resources) = (trace.clone(), Rc::clone(&resources));
            let observed = Rc::clone(&gateway);
            let boots = Rc::new(Cell::new(0u16));
            sim.host(GATEWAY, move || {
                let (mut cfg, resources, trace) =
                    (cfg.clone(), Rc::clone(&resources), trace.clone());
                let observed = Rc::clone(&observed);
                let boot = next_boot(&boots);
                let inside = SocketAddr::new(inside_ip, NODE_PORT + boot);
                cfg.seed = cfg.seed.wrapping_add(u64::from(boot) << 32);
                async move {
                    let socket = NatShim::bind(inside, via).await?;
                    gateway_host(cfg, socket, epoch, resources, observed, trace).await
                }
            });
        }

        // Outsiders reach inside hosts only through their NAT (the portal's TCP replies aside).
        let inside: Vec<&str> = CLIENT_NAMES.iter().copied().chain([GATEWAY]).collect();
        let outsiders: Vec<&str> = RELAY_NAMES
            .iter()
            .copied()
            .chain([NAT_C, NAT_G])
            .chain(inside.iter().copied())
            .collect();
        for host in &inside {
            let others: Vec<&str> = outsiders.iter().copied().filter(|o| o != host).collect();
            let own_nat = if *host == GATEWAY { NAT_G } else { NAT_C };
            let others: Vec<&str> = others.into_iter().filter(|o| *o != own_nat).collect();
            links::isolate_inside(&sim, &[host], &others);
        }

        Self {
            epoch,
            sim,
            trace,
            taps,
            resources,
            gateway,
            nats: [nat_c, nat_g],
            nat_types,
            store,
            resource_specs,
            relays_announced,
            portal,
            relay_crashed: [false; RELAYS],
            relay_faults,
            relay_taps,
            heartbeat: super::watchdog::Heartbeat::new(format!("seed {seed}, starting")),
            relays,
            heals: Vec::new(),
            tick: settings.tick,
            next_payload: 0,
        }
    }

    /// Runs the simulation for `d`, healing portal cuts as they come due.
    ///
    /// Stretches where nothing can happen are stepped over in one step (see
    /// [`crate::turmoil_net::timers`]); the first step is always one tick, since what the driver
    /// did before the call (a command to a host, an administrative change) runs in it.
    pub fn run_for(&mut self, d: Duration) -> turmoil::Result {
        let target = self.sim.elapsed() + d;
        let mut step = self.tick;
        let mut first = true;
        while self.sim.elapsed() < target {
            if !self.heals.is_empty() {
                self.heal_due();
            }
            // A host runs in a step if a message reaches it or a timer of its is due within a
            // tick of the step's end (the margin the skip keeps too); else its time is owed.
            // The first step runs every host: the driver's commands wake tasks without either.
            if first || !timers::skip_ahead() {
                self.sim.step_by(step)?;
            } else {
                let until = self.sim.elapsed() + step + self.tick;
                self.sim
                    .step_lazily(step, &mut |host| timers::host_due(host, until))?;
            }
            first = false;
            let now = self.sim.elapsed();
            let limit = self
                .heals
                .iter()
                .map(|(at, _)| *at)
                .fold(target, Duration::min);
            step = timers::next_step(now, self.tick, limit, self.sim.messages_in_flight());
            crate::turmoil_net::set_driver_elapsed(self.sim.elapsed());
            self.heartbeat.beat();
        }
        Ok(())
    }

    fn heal_due(&mut self) {
        let now = self.sim.elapsed();
        let (due, later): (Vec<_>, Vec<_>) = self.heals.iter().partition(|(at, _)| *at <= now);
        self.heals = later;
        for (_, node) in due {
            self.sim.repair(PORTAL, node_host(node));
            self.trace.record_at(
                now,
                "driver",
                format_args!("portal link of {} healed", node_host(node)),
            );
        }
    }

    /// Cuts the portal's TCP to `node` (clients, then the gateway) for `d`.
    pub fn cut_portal(&mut self, node: usize, d: Duration) {
        if node >= NODES {
            return;
        }
        self.sim.partition(PORTAL, node_host(node));
        self.heals.push((self.sim.elapsed() + d, node));
    }

    /// Degrades (or, with [`Burst::Over`], restores) the links of the places in `sites` (bit
    /// `i` is site `i`: the clients' NAT, the gateway's NAT, the relays).
    pub fn loss_burst(&mut self, sites: u8, burst: Burst) {
        let copies = LinkProfile {
            duplicate: 0.2,
            reorder: 0.2,
            reorder_delay: Duration::from_millis(80),
            jitter: Duration::from_millis(30),
            ..LinkProfile::PERFECT
        };
        let profile = match burst {
            Burst::Copies => copies,
            Burst::Losses => LinkProfile {
                loss: 0.3,
                ..copies
            },
            Burst::Over => LinkProfile::PERFECT,
        };
        for site in 0..LINK_SITES {
            if sites & (1 << site) == 0 {
                continue;
            }
            let faults = match site {
                0 | 1 => self.nats[site].faults(),
                relay => &self.relay_faults[relay - 2],
            };
            match burst {
                Burst::Copies | Burst::Losses => {
                    faults.set_profile(Direction::Egress, profile);
                    faults.set_profile(Direction::Ingress, profile);
                }
                Burst::Over => faults.clear(),
            }
        }
    }

    /// Rebinds a client's socket to a new inside port. False if the client is not running.
    pub fn roam(&mut self, client: usize) -> bool {
        self.taps[client]
            .roam
            .borrow()
            .as_ref()
            .is_some_and(|tx| tx.send(()).is_ok())
    }

    /// Tells a client's host to misbehave. False if the client is not running.
    pub fn attack(&mut self, client: usize, attack: Attack) -> bool {
        self.taps[client]
            .attack
            .borrow()
            .as_ref()
            .is_some_and(|tx| tx.send(attack).is_ok())
    }

    /// Which node owns which public key, as the portal says (see `Portal::key_owners`).
    pub fn portal_key_owners(&self) -> Vec<(node_core::portal::PublicKey, portal_sim::Identity)> {
        let server = self.portal.borrow();
        server
            .as_ref()
            .map(|s| s.with_portal(|p, _| p.key_owners()))
            .unwrap_or_default()
    }

    /// The fingerprint of the preshared key the portal gave `client`'s pair with the gateway
    /// in its current generation, once both ends are joined and a flow created one.
    pub fn portal_psk(&self, client: usize) -> Option<[u8; 8]> {
        let cid = node_core::ids::ClientId(client as u64 + 1);
        let gid = node_core::ids::GatewayId(1);
        let server = self.portal.borrow();
        server.as_ref()?.with_portal(|p, _| {
            let joined = p.is_joined(portal_sim::Identity::Client(cid))
                && p.is_joined(portal_sim::Identity::Gateway(gid));
            let psk = p.preshared_key(cid, gid)?;
            joined.then(|| node_core::Psk::from(psk).fingerprint())
        })
    }

    /// The public address of the clients' NAT.
    pub fn clients_public_ip(&self) -> IpAddr {
        self.nats[0].public_ip()
    }

    /// The portal announces the standby relay and withdraws `old`.
    pub fn replace_relay(&mut self, old: usize) {
        let standby = (0..RELAYS).find(|r| !self.relays_announced.borrow().contains(r));
        let Some(standby) = standby else {
            return;
        };
        {
            let mut announced = self.relays_announced.borrow_mut();
            announced.insert(standby);
            announced.remove(&old);
        }
        let (new_id, new_addr) = self.relays[standby];
        let old_id = self.relays[old].0;
        let relay = portal_sim::seed::RelaySeed {
            id: node_core::ids::RelayId(new_id),
            address: new_addr,
        };
        self.admin(&Change::AddRelay { relay });
        self.admin(&Change::RemoveRelay {
            id: node_core::ids::RelayId(old_id),
        });
    }

    /// What kind of path a client's connection to the gateway is on now: `relayed` (either
    /// end's relayed candidate), `direct` (to the gateway's own address) or `srflx` (to the
    /// gateway NAT's public address, learnt from a relay or from the checks themselves).
    pub fn path_kind(&self, client: usize) -> Option<&'static str> {
        let (_, path) = (*self.taps[client].path.borrow())?;
        let remote = path.remote.ip();
        let kind = if path.relay.is_some() || self.relays.iter().any(|(_, a)| a.ip() == remote) {
            "relayed"
        } else if remote == self.nats[1].public_ip() {
            "srflx"
        } else {
            "direct"
        };
        Some(kind)
    }

    /// The IP of relay `r` (its relayed candidates' too).
    pub fn relay_ip(&self, r: usize) -> IpAddr {
        self.relays[r].1.ip()
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// A payload no packet carried before, naming its sender.
    pub fn fresh_payload(&mut self, client: usize) -> Vec<u8> {
        self.next_payload += 1;
        format!("probe c{} #{}", client + 1, self.next_payload).into_bytes()
    }

    /// Hands a packet to a client's device. False if the client is not running.
    pub fn inject(&mut self, client: usize, packet: Vec<u8>) -> bool {
        let sent = self.taps[client]
            .inject
            .borrow()
            .as_ref()
            .is_some_and(|tx| tx.send(packet).is_ok());
        self.trace.record_at(
            self.sim.elapsed(),
            "driver",
            format!("inject c{} sent={sent}", client + 1),
        );
        sent
    }

    /// How many echoes of `payload` came back to `client`.
    pub fn echoes(&self, client: usize, payload: &[u8]) -> usize {
        self.echo_times(client, payload).len()
    }

    /// When each echo of `payload` came back to `client`.
    pub fn echo_times(&self, client: usize, payload: &[u8]) -> Vec<Duration> {
        self.taps[client]
            .received
            .borrow()
            .iter()
            .filter(|seen| {
                IpPacket::parse(seen.packet.as_slice()).is_ok_and(|p| p.payload() == payload)
            })
            .map(|seen| seen.at)
            .collect()
    }

    /// How many times `payload` reached the resource network, and from which sources.
    pub fn arrivals(&self, payload: &[u8]) -> Vec<(IpAddr, IpAddr)> {
        self.copies_arrived(payload, |_, p| (p.source(), p.destination()))
    }

    /// What `each` says of every copy of `payload` that reached the resource network: when it
    /// arrived (simulated time) and the packet.
    fn copies_arrived<R>(
        &self,
        payload: &[u8],
        each: impl Fn(Duration, &IpPacket<&[u8]>) -> R,
    ) -> Vec<R> {
        self.resources
            .arrived
            .borrow()
            .iter()
            .filter_map(|seen| {
                let p = IpPacket::parse(seen.packet.as_slice()).ok()?;
                (p.payload() == payload).then(|| each(seen.at, &p))
            })
            .collect()
    }

    /// When (simulated time) the access the portal last granted `client` to `resource` ends
    /// at the gateway (see `Portal::granted_until`).
    pub fn granted_until(&self, client: usize, resource: usize) -> Option<Duration> {
        self.portal_until(client, resource, portal_sim::Portal::granted_until)
    }

    /// When (simulated time) the portal's current flow of `client` to `resource` ends (see
    /// `Portal::flow_until`).
    pub fn flow_until(&self, client: usize, resource: usize) -> Option<Duration> {
        self.portal_until(client, resource, portal_sim::Portal::flow_until)
    }

    fn portal_until(
        &self,
        client: usize,
        resource: usize,
        until: fn(&portal_sim::Portal, ClientId, ResourceId) -> Option<u64>,
    ) -> Option<Duration> {
        let cid = ClientId(client as u64 + 1);
        let rid = ResourceId(resource as u64 + 1);
        let server = self.portal.borrow();
        let unix = server.as_ref()?.with_portal(|p, _| until(p, cid, rid))?;
        Some(Duration::from_secs(unix.saturating_sub(self.epoch)))
    }

    /// When (simulated time) each copy of `payload` reached a resource.
    pub fn arrival_times(&self, payload: &[u8]) -> Vec<Duration> {
        self.copies_arrived(payload, |at, _| at)
    }

    /// Restarts the portal: every socket drops, every preshared key is new.
    pub fn restart_portal(&mut self) {
        self.sim.bounce(PORTAL);
    }

    /// A NAT forgets every mapping.
    pub fn flush_nat(&mut self, side: Side) {
        let nat = match side {
            Side::Clients => &self.nats[0],
            Side::Gateway => &self.nats[1],
        };
        nat.command(NatCommand::FlushAll);
    }

    /// Crashes a relay.
    pub fn crash_relay(&mut self, relay: usize) {
        self.sim.crash(RELAY_NAMES[relay]);
        self.relay_crashed[relay] = true;
    }

    /// Starts a crashed relay again (empty).
    pub fn restart_relay(&mut self, relay: usize) {
        if self.relay_crashed[relay] {
            self.sim.bounce(RELAY_NAMES[relay]);
            self.relay_crashed[relay] = false;
        }
    }

    /// Blocks (or unblocks) direct UDP between the two NATs.
    pub fn block_direct(&mut self, blocked: bool) {
        if blocked {
            self.sim.partition(NAT_C, NAT_G);
        } else {
            self.sim.repair(NAT_C, NAT_G);
        }
    }

    /// Restarts the gateway (all its state is lost).
    pub fn restart_gateway(&mut self) {
        self.sim.bounce(GATEWAY);
    }

    /// Restarts a client (all its state is lost).
    pub fn restart_client(&mut self, client: usize) {
        self.taps[client].inject.borrow_mut().take();
        self.sim.bounce(CLIENT_NAMES[client]);
    }

    /// An administrative change: committed to the store, then applied to the running portal
    /// (which tells the nodes), as the admin API does. False if the directory refuses it.
    pub fn admin(&mut self, change: &Change) -> bool {
        if self.store.commit_now(change).is_err() {
            return false;
        }
        if let Some(server) = self.portal.borrow().as_ref() {
            server.with_portal(|portal, now| {
                let _ = portal.apply(change, now);
            });
        }
        true
    }

    /// Grants or removes a policy at the portal. False if the portal refused the change (no
    /// such policy to remove, or the resource is gone).
    pub fn set_policy(&mut self, client: usize, resource: usize, allowed: bool) -> bool {
        if allowed {
            return self.set_policy_for(client, resource, None);
        }
        self.admin(&Change::RemovePolicy {
            client_id: node_core::ids::ClientId(client as u64 + 1),
            resource_id: node_core::ids::ResourceId(resource as u64 + 1),
        })
    }

    /// Grants a policy whose authorizations last `secs` (the portal's default if `None`). False
    /// if the portal refused it (the resource is gone).
    pub fn set_policy_for(&mut self, client: usize, resource: usize, secs: Option<u64>) -> bool {
        let policy = portal_sim::seed::PolicySeed {
            client_id: node_core::ids::ClientId(client as u64 + 1),
            resource_id: node_core::ids::ResourceId(resource as u64 + 1),
            duration_secs: secs,
        };
        self.admin(&Change::AddPolicy { policy })
    }

    /// Removes a resource (and its policies) at the portal. False if it was gone already.
    pub fn remove_resource(&mut self, resource: usize) -> bool {
        self.admin(&Change::RemoveResource {
            id: node_core::ids::ResourceId(resource as u64 + 1),
        })
    }

    /// Puts a resource back as first configured (without policies).
    pub fn add_resource(&mut self, resource: usize) -> bool {
        let Some(spec) = self.resource_specs.get(resource).cloned() else {
            return false;
        };
        self.admin(&Change::AddResource { resource: spec })
    }
}

/// The how-manieth start of a host this is. A restarted node binds a new port, as an
/// ephemeral bind does, and draws new randomness, as a new process does: it must not inherit
/// its previous incarnation's NAT mapping, relay allocations or transaction ids.
fn next_boot(boots: &Cell<u16>) -> u16 {
    let boot = boots.get();
    boots.set(boot.wrapping_add(1) % 100);
    boot
}

fn pick_mapping(rng: &mut ChaCha8Rng) -> MappingBehaviour {
    match rng.gen_range(0..3) {
        0 => MappingBehaviour::EndpointIndependent,
        1 => MappingBehaviour::AddressDependent,
        _ => MappingBehaviour::AddressAndPortDependent,
    }
}

fn pick_filtering(rng: &mut ChaCha8Rng) -> Filtering {
    match rng.gen_range(0..3) {
        0 => Filtering::EndpointIndependent,
        1 => Filtering::AddressDependent,
        _ => Filtering::AddressAndPortDependent,
    }
}

/// The portal's seed file: the initial policies, the announced relays.
fn seed_file(
    policies: &BTreeSet<(usize, usize)>,
    relays: &[(u64, SocketAddr)],
) -> portal_sim::SeedFile {
    let clients: Vec<String> = (0..CLIENTS)
        .map(|i| {
            let id = i as u64 + 1;
            format!(
                r#"{{"id":{id},"name":"client{id}","token":"client-token-{id}","ipv4":"{}","ipv6":"fd00:2021:1111::{id}"}}"#,
                client_tunnel_ip(id)
            )
        })
        .collect();
    let resources = format!(
        r#"[{{"id":1,"name":"r1","site":"hq","type":"host","address":"{}"}},
            {{"id":2,"name":"r2","site":"hq","type":"cidr","address":"10.1.0.0/24"}},
            {{"id":3,"name":"r3","site":"hq","type":"host","address":"{}"}}]"#,
        RESOURCE_IPS[0], RESOURCE_IPS[2]
    );
    let policies: Vec<String> = policies
        .iter()
        .map(|(c, r)| format!(r#"{{"client_id":{},"resource_id":{}}}"#, c + 1, r + 1))
        .collect();
    let relays: Vec<String> = relays
        .iter()
        .map(|(id, addr)| format!(r#"{{"id":{id},"address":"{addr}"}}"#))
        .collect();
    let json = format!(
        r#"{{"clients":[{}],"gateways":[{{"id":1,"name":"gateway1","token":"gateway-token-1","site":"hq"}}],"resources":{resources},"policies":[{}],"relays":[{}]}}"#,
        clients.join(","),
        policies.join(","),
        relays.join(",")
    );
    match portal_sim::SeedFile::parse(&json) {
        Ok(seed) => seed,
        Err(error) => panic!("the simulation's seed file is invalid: {error}"),
    }
}

/// A packet from client `client` (0-based) to resource `resource` carrying `payload`.
pub fn probe_packet(client: usize, resource: usize, payload: &[u8], proto: Proto) -> Vec<u8> {
    let src = SocketAddr::new(client_tunnel_ip(client as u64 + 1), 40_000);
    let dst = SocketAddr::new(IpAddr::V4(RESOURCE_IPS[resource]), 7);
    let packet = match proto {
        Proto::Udp => IpPacket::udp(src, dst, payload),
        Proto::Tcp => IpPacket::tcp(
            src,
            dst,
            1,
            1,
            node_core::packet::TcpFlags::ACK | node_core::packet::TcpFlags::PSH,
            payload,
        ),
        Proto::Icmp => IpPacket::icmp_echo_request(src.ip(), dst.ip(), 7, 1, payload),
    };
    match packet {
        Ok(p) => p.into_inner(),
        Err(error) => panic!("cannot build a probe: {error}"),
    }
}

/// The host name of a node with a portal connection (clients, then the gateway).
fn node_host(node: usize) -> &'static str {
    CLIENT_NAMES.get(node).copied().unwrap_or(GATEWAY)
}
