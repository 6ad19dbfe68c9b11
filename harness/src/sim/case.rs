//! One case of the simulation: a world, a sequence of transitions applied to it and to the
//! model, and every check after every step. Shared by `tests/sim.rs`, the `run` command and the
//! `sim` fuzz target (the transitions come from [`super::draw`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use node_core::packet::IpPacket;

use super::deployment::{probe_packet, Burst, Deployment, RESOURCE_IPS};
use super::hostile::{candidate_flood, claim_key, handshake_flood, Attack, FLOOD_CANDIDATES};
use super::hosts::client_tunnel_ip;
use super::model::{
    Expect, Model, Proto, Transition, ANSWER_WITHIN, CLIENTS, FLOOD, HOSTILE, NODES, RELAYS,
    RESOURCES, SEND_WINDOW, SETTLE, WARM_UP,
};
use super::observers::Observers;

/// The start of the keys that hold a worst case rather than a count: `worst_lost_ms:<reason>`
/// is how long after a fault (after its end, for a loss burst; after the heal, for a portal
/// cut) the latest probe was sent that never arrived, in milliseconds. The model's bound for
/// that fault is the promise; this is how close a run came to it.
pub const WORST_LOST: &str = "worst_lost_ms:";

/// The key that holds how long the slowest packet required to arrive took to be answered (its
/// echo back at the client), in milliseconds; [`ANSWER_WITHIN`] is the promise.
pub const WORST_ANSWER: &str = "worst_answer_ms";

/// What a case counted, for the coverage line and the summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<String, u64>);

impl Counts {
    /// Adds one to `key`.
    pub fn bump(&mut self, key: impl Into<String>) {
        *self.0.entry(key.into()).or_default() += 1;
    }

    /// Raises `key` (a [`WORST_LOST`] key or [`WORST_ANSWER`]) to `value` if that is more.
    pub fn raise(&mut self, key: impl Into<String>, value: u64) {
        let worst = self.0.entry(key.into()).or_default();
        *worst = (*worst).max(value);
    }

    /// Adds another case's counts (and keeps the worse of two worst cases).
    pub fn merge(&mut self, other: &Counts) {
        for (k, v) in &other.0 {
            if k.starts_with(WORST_LOST) || k == WORST_ANSWER {
                self.raise(k.clone(), *v);
            } else {
                *self.0.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// `key=n` pairs, space separated.
    pub fn line(&self) -> String {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} {}", parts.join(" "), self.uncertain_ratio())
    }

    /// `uncertain=N/M (P %)`: of the probes checked, how many the model could not hold to an
    /// outcome (a fault was still healing); the rest were required to arrive or to be refused.
    pub fn uncertain_ratio(&self) -> String {
        let get = |k: &str| self.0.get(k).copied().unwrap_or(0);
        let uncertain = get("checked:uncertain");
        let checked = uncertain + get("checked:delivered") + get("checked:refused");
        let percent = if checked == 0 {
            0.0
        } else {
            uncertain as f64 * 100.0 / checked as f64
        };
        format!("uncertain={uncertain}/{checked} ({percent:.0} %)")
    }
}

/// A running case.
pub struct Case {
    /// The simulated deployment.
    pub deployment: Deployment<'static>,
    /// The reference model, in step with the world.
    pub model: Model,
    /// What happened so far.
    pub counts: Counts,
    /// The clients' path upgrades already in [`Case::counts`].
    upgrades_counted: u64,
    /// Whether the [`HOSTILE`] client keeps its routes past revocations and expiries.
    disobeying: bool,
    /// The end of the last flow the portal made for the [`HOSTILE`] client to each resource
    /// since the client last started (seen at the end of every step): it keeps the route past
    /// it, also after a portal restart forgot the flow.
    hostile_flows: BTreeMap<usize, Duration>,
    /// What the observers on the trace keep between steps.
    observers: Observers,
}

/// A probe on its way, with what its checks need of the moment it was sent.
struct Sent {
    client: usize,
    resource: usize,
    proto: Proto,
    payload: Vec<u8>,
    /// What the model expected when it was sent.
    expect: Expect,
    /// The gateway's refusals so far.
    refused_before: u64,
    /// The end of the access the portal had granted (see [`check_granted`]).
    granted_before: Option<Duration>,
    /// The end of the client's flow to the resource.
    flow_before: Option<Duration>,
    sent_at: Duration,
    /// Whether the client was running to send it.
    injected: bool,
}

impl Case {
    /// Builds the world for `seed` and lets it settle.
    pub fn start(seed: u64) -> Result<Self, String> {
        let keep_lines = std::env::var_os("SIM_TRACE").is_some();
        Self::start_traced(seed, keep_lines)
    }

    /// [`Case::start`], keeping the trace's text lines if `keep_lines` (for the timeline).
    pub fn start_traced(seed: u64, keep_lines: bool) -> Result<Self, String> {
        Self::start_world(seed, keep_lines, true)
    }

    /// [`Case::start`] with a [`HOSTILE`] client that obeys revocations and expiries like the
    /// other (the model still treats it as disobeying, which only holds fewer of its packets to
    /// an outcome): for runs about long life rather than hostility, such as the soak, where a
    /// client that never renews would leave most of its packets unchecked.
    pub fn start_obedient(seed: u64) -> Result<Self, String> {
        let keep_lines = std::env::var_os("SIM_TRACE").is_some();
        Self::start_world(seed, keep_lines, false)
    }

    fn start_world(seed: u64, keep_lines: bool, disobeying: bool) -> Result<Self, String> {
        let mut model = Model::initial(seed);
        let mut deployment =
            Deployment::build(seed, model.authorized.clone(), keep_lines, disobeying);
        model.direct_possible = deployment.nat_types.direct_possible();
        deployment.run_for(WARM_UP).map_err(|e| e.to_string())?;
        let mut counts = Counts::default();
        let t = deployment.nat_types;
        counts.bump(format!("nat:{:?}/{:?}", t.clients.0, t.gateway.0));
        Ok(Self {
            deployment,
            model,
            counts,
            upgrades_counted: 0,
            disobeying,
            hostile_flows: BTreeMap::new(),
            observers: Observers::default(),
        })
    }

    /// Applies `t` to the world and the model and checks the result.
    pub fn step(&mut self, t: &Transition) -> Result<(), String> {
        let result = self
            .apply_step(t)
            .and_then(|()| self.observers.check(&self.deployment, &self.model));
        for resource in 0..RESOURCES {
            if let Some(end) = self.deployment.flow_until(HOSTILE, resource) {
                self.hostile_flows.insert(resource, end);
            }
        }
        // Relayed paths that became direct, counted where they happened.
        let upgrades: u64 = self.deployment.taps.iter().map(|t| t.upgrades.get()).sum();
        if upgrades > self.upgrades_counted {
            *self.counts.0.entry("path:upgraded".into()).or_default() +=
                upgrades - self.upgrades_counted;
            self.upgrades_counted = upgrades;
        }
        result
    }

    fn apply_step(&mut self, t: &Transition) -> Result<(), String> {
        let at = self.deployment.elapsed().as_secs();
        self.deployment.heartbeat.set_label(format!(
            "seed {}, transition {t} at {at} s of simulated time",
            self.model.seed
        ));
        self.counts.bump(t.kind());
        let before = self.model.clone();
        self.model.apply(t);
        let w = &mut self.deployment;
        w.trace.record_at(w.elapsed(), "driver", t);
        let run = |w: &mut Deployment<'static>, d| w.run_for(d).map_err(|e| e.to_string());
        if let Some((client, resource, proto)) = t.probe() {
            let sent = self.send_probe(&before, client, resource, proto);
            run(&mut self.deployment, SEND_WINDOW)?;
            self.check_sent(&before, &sent, true)?;
            return check_invariants(&self.deployment);
        }
        match t {
            // Probes returned above; time just passes.
            Transition::Send { .. }
            | Transition::SendTcp { .. }
            | Transition::Ping { .. }
            | Transition::Advance { .. } => {}
            Transition::LossBurst { sites, secs } => {
                // The burst starts with copies and reordering alone, for a send window: a
                // probe from every client to every resource sent then is held to what the
                // model expects (exactly once, answered in time). Then packets are lost too:
                // nothing is sent into that, and recovery counts from its end.
                w.loss_burst(*sites, Burst::Copies);
                let mut sent = Vec::new();
                for client in 0..CLIENTS {
                    for resource in 0..RESOURCES {
                        sent.push(self.send_probe(&before, client, resource, Proto::Udp));
                    }
                }
                run(&mut self.deployment, SEND_WINDOW)?;
                for probe in &sent {
                    self.check_sent(&before, probe, false)?;
                }
                let w = &mut self.deployment;
                w.loss_burst(*sites, Burst::Losses);
                run(w, Duration::from_secs(*secs))?;
                w.loss_burst(*sites, Burst::Over);
                run(w, SETTLE)?;
                return check_invariants(&self.deployment);
            }
            Transition::PortalRestart => w.restart_portal(),
            Transition::NatExpiry(side) => w.flush_nat(*side),
            Transition::RelayCrash(r) => w.crash_relay(*r),
            Transition::RelayRestart(r) => w.restart_relay(*r),
            Transition::BlockDirect => w.block_direct(true),
            Transition::UnblockDirect => w.block_direct(false),
            // A change the portal refuses (a policy for a removed resource) changes nothing,
            // in the model as at the portal.
            Transition::Revoke { client, resource } => {
                w.set_policy(*client, *resource, false);
            }
            Transition::Authorize { client, resource } => {
                w.set_policy(*client, *resource, true);
            }
            Transition::AuthorizeFor {
                client,
                resource,
                secs,
            } => {
                w.set_policy_for(*client, *resource, Some(*secs));
            }
            Transition::GatewayRestart => w.restart_gateway(),
            Transition::ClientRestart(c) => {
                if *c == HOSTILE {
                    self.hostile_flows.clear();
                }
                w.restart_client(*c);
            }
            Transition::PortalPartition { node, secs } => {
                w.cut_portal(*node, std::time::Duration::from_secs(*secs));
            }
            Transition::Roam(c) => {
                w.roam(*c);
            }
            Transition::RelayReplace(r) => w.replace_relay(*r),
            // The model allows these only when they apply: a refusal is a disagreement.
            Transition::RemoveResource(r) => {
                if !w.remove_resource(*r) {
                    return Err(format!("the portal refused to remove r{}", r + 1));
                }
            }
            Transition::AddResource(r) => {
                if !w.add_resource(*r) {
                    return Err(format!("the portal refused to add r{} back", r + 1));
                }
            }
            Transition::CandidateFlood => return self.candidate_flood(),
            Transition::HandshakeFlood => return self.handshake_flood(),
            Transition::ClaimKey => return self.claim_key(),
            Transition::Spoof(r) => return self.spoof(*r),
        }
        // The world runs as long as the model says the transition takes (a change settles).
        run(&mut self.deployment, t.duration())?;
        check_invariants(&self.deployment)
    }

    /// The hostile client signals [`FLOOD_CANDIDATES`] bogus candidates for its connection to
    /// the gateway. The gateway's connections hold at most
    /// [`node_core::MAX_REMOTE_CANDIDATES`] signalled candidates each, and when the flood
    /// reached a connection, every candidate past the cap was dropped.
    fn candidate_flood(&mut self) -> Result<(), String> {
        let w = &mut self.deployment;
        let dropped_before = w.gateway.stats.borrow().remote_candidates_dropped;
        let frame = candidate_flood(w.clients_public_ip());
        w.attack(HOSTILE, Attack::Frame(frame));
        w.run_for(SETTLE).map_err(|e| e.to_string())?;
        let max = node_core::MAX_REMOTE_CANDIDATES;
        for (cid, held) in w.gateway.remote_candidates.borrow().iter() {
            if *held > max {
                return Err(format!(
                    "the gateway's connection to client {cid} holds {held} signalled candidates, \
                     more than {max}"
                ));
            }
        }
        let dropped = w.gateway.stats.borrow().remote_candidates_dropped - dropped_before;
        if dropped > 0 {
            let flood = FLOOD_CANDIDATES as u64;
            if dropped + (max as u64) < flood {
                return Err(format!(
                    "the gateway dropped {dropped} of {flood} signalled candidates: it took more \
                     than {max}"
                ));
            }
            self.counts.bump("checked:candidates_capped");
        }
        check_invariants(&self.deployment)
    }

    /// The hostile client sends forged handshake initiations (valid mac1, keys of their own)
    /// to where its connection's path reaches the gateway. The gateway's load guard lets at
    /// most [`node_core::HANDSHAKE_LOAD`] a second reach the X25519, and answers or drops the
    /// rest.
    fn handshake_flood(&mut self) -> Result<(), String> {
        let w = &mut self.deployment;
        let key = w.gateway.public_key.get();
        // Straight to the gateway's address (its NAT's, or its relayed one): a path on the
        // hostile client's own relay would need its allocation.
        let dst = w.taps[HOSTILE]
            .path
            .borrow()
            .and_then(|(_, path)| path.relay.is_none().then_some(path.remote));
        let (Some(key), Some(dst)) = (key, dst) else {
            w.run_for(FLOOD + SETTLE).map_err(|e| e.to_string())?;
            return check_invariants(&self.deployment);
        };
        let before = w.gateway.stats.borrow().clone();
        let salt = u64::try_from(w.elapsed().as_millis()).unwrap_or(0);
        let wall = crate::turmoil_net::sim_wall_clock(crate::SIM_EPOCH_UNIX_SECS);
        let datagrams = handshake_flood(key, self.model.seed.wrapping_add(salt), wall);
        let sent = datagrams.len() as u64;
        w.attack(HOSTILE, Attack::Datagrams { dst, datagrams });
        w.run_for(FLOOD + SETTLE).map_err(|e| e.to_string())?;
        let after = w.gateway.stats.borrow().clone();
        let refused = (after.cookie_replies + after.wireguard_errors)
            .saturating_sub(before.cookie_replies + before.wireguard_errors);
        // A forged initiation that passes the guard costs an X25519 and is then dropped: its
        // key belongs to no connection.
        let passed = after
            .unroutable_wireguard
            .saturating_sub(before.unroutable_wireguard);
        // The flood spans at most this many of the guard's one-second windows.
        let windows = FLOOD.as_secs() + 2;
        let bound = node_core::HANDSHAKE_LOAD * windows;
        if passed > bound {
            return Err(format!(
                "the gateway decrypted {passed} of {sent} forged handshake initiations, more than \
                 {bound}"
            ));
        }
        if refused + passed > 0 {
            if refused < passed {
                return Err(format!(
                    "the gateway answered or dropped {refused} forged handshake initiations and \
                     decrypted {passed}"
                ));
            }
            self.counts.bump("checked:handshakes_refused");
        }
        check_invariants(&self.deployment)
    }

    /// The hostile client joins its topic again with the other client's public key, the one
    /// that client last joined with (a key nobody announced yet is nobody's to steal: it is
    /// the first joiner's). The portal refuses: the key stays the other client's, online or
    /// not, and the hostile client's session keeps its own.
    fn claim_key(&mut self) -> Result<(), String> {
        let w = &mut self.deployment;
        let victim =
            portal_sim::Identity::Client(node_core::ids::ClientId((1 - HOSTILE) as u64 + 1));
        let owned = w.portal_key_owners();
        let Some(key) = owned.iter().find(|(_, o)| *o == victim).map(|(k, _)| *k) else {
            w.run_for(SETTLE).map_err(|e| e.to_string())?;
            return check_invariants(&self.deployment);
        };
        let sent = w.attack(HOSTILE, Attack::Frame(claim_key(key)));
        w.run_for(SETTLE).map_err(|e| e.to_string())?;
        let owner = w
            .portal_key_owners()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, o)| o);
        match owner {
            Some(owner) if owner != victim => {
                return Err(format!("the portal gave {victim}'s public key to {owner}"));
            }
            // Its owner may have joined with a new key since (a restart): then the old one is
            // free, and nobody may hold it but whoever joins with it.
            Some(_) | None => {}
        }
        if sent && owner == Some(victim) {
            self.counts.bump("checked:claim_refused");
        }
        check_invariants(&self.deployment)
    }

    /// The hostile client sends a datagram to `resource` from the other client's tunnel
    /// address. Nothing may arrive and no answer may reach anyone, whether the client had a
    /// route to it or not; when the gateway's source check dropped it (the client did have
    /// one), that is counted.
    fn spoof(&mut self, resource: usize) -> Result<(), String> {
        let w = &mut self.deployment;
        let victim = 1 - HOSTILE;
        let payload = w.fresh_payload(HOSTILE);
        let packet = spoofed_probe(client_tunnel_ip(victim as u64 + 1), resource, &payload);
        let dropped_before = w.gateway.wrong_source.get();
        w.inject(HOSTILE, packet);
        // From its socket, it also sends straight to the other client's relayed address. The
        // relay holds no permission for it there (the other client's only peer is the
        // gateway): it must drop them all.
        let target = w.taps[victim].own_relayed.borrow().first().copied();
        // A crashed relay the other client has not noticed yet refuses nothing.
        let relay = target
            .and_then(|t| (0..RELAYS).find(|r| w.relay_ip(*r) == t.ip()))
            .filter(|r| self.model.relays_up[*r]);
        let refused_before = relay.map(|r| w.relay_taps[r].stats.get().dropped_no_permission);
        if let Some(dst) = target {
            let datagrams = vec![payload.clone(); INTRUSIONS];
            w.attack(HOSTILE, Attack::Datagrams { dst, datagrams });
        }
        w.run_for(SEND_WINDOW).map_err(|e| e.to_string())?;
        if let (Some(r), Some(before), Some(dst)) = (relay, refused_before, target) {
            let refused = w.relay_taps[r].stats.get().dropped_no_permission;
            let refused = refused.saturating_sub(before);
            if refused < INTRUSIONS as u64 {
                return Err(format!(
                    "relay {} let through datagrams from c{} to c{}'s relayed address {dst}, \
                     which has no permission for it ({refused} of {INTRUSIONS} refused)",
                    r + 1,
                    HOSTILE + 1,
                    victim + 1,
                ));
            }
            self.counts.bump("checked:intrusion_refused");
        }
        let arrivals = w.arrivals(&payload);
        if !arrivals.is_empty() {
            return Err(format!(
                "a packet with c{}'s source reached a resource: {arrivals:?}",
                victim + 1
            ));
        }
        let echoes = w.echoes(victim, &payload) + w.echoes(HOSTILE, &payload);
        if echoes > 0 {
            return Err("an answer to a spoofed packet reached a client".to_owned());
        }
        let dropped = w.gateway.wrong_source.get() > dropped_before;
        w.trace.record_at(
            w.elapsed(),
            "driver",
            format_args!("checked:refused arrived=0 echoed=0 dropped_by_gateway={dropped}"),
        );
        self.counts.bump("checked:refused");
        if dropped {
            self.counts.bump("checked:spoof_dropped");
        }
        check_invariants(&self.deployment)
    }

    /// Sends a probe from `client` to `resource` now, noting what its checks need of the
    /// moment before.
    fn send_probe(&mut self, before: &Model, client: usize, resource: usize, proto: Proto) -> Sent {
        let w = &mut self.deployment;
        let payload = w.fresh_payload(client);
        let refused_before = w.gateway.refused.get();
        let granted_before = w.granted_until(client, resource);
        let flow_before = w.flow_until(client, resource);
        let sent_at = w.elapsed();
        let injected = w.inject(client, probe_packet(client, resource, &payload, proto));
        Sent {
            client,
            resource,
            proto,
            payload,
            expect: before.expect(client, resource, before.now),
            refused_before,
            granted_before,
            flow_before,
            sent_at,
            injected,
        }
    }

    /// Checks what became of `sent` after its send window. `alone`: no other probe went in
    /// the same window, so the gateway's refusals in it are this probe's. A probe not sent
    /// alone proves no pair for the model: the fault that follows it may break the pair.
    fn check_sent(&mut self, before: &Model, sent: &Sent, alone: bool) -> Result<(), String> {
        let Sent {
            client,
            resource,
            proto,
            ref payload,
            expect,
            refused_before,
            granted_before,
            flow_before,
            sent_at,
            injected,
        } = *sent;
        let w = &mut self.deployment;
        let refused_by_gateway = alone && w.gateway.refused.get() > refused_before;
        // Nothing reaches a resource past the access the portal granted (a new grant in the
        // window counts: the client may have asked anew for this very packet).
        let granted = granted_before.max(w.granted_until(client, resource));
        check_granted(client, resource, granted, &w.arrival_times(payload))?;
        // The disobeying client keeps its route past the end of its flow: the gateway refuses
        // it from then on, or a tunnel keyed by an older generation's preshared key goes
        // nowhere. A portal that restarted since made no flow: the last one it made before is
        // what the gateway holds (its init extends only what the gateway still has). Without
        // any, the client holds no route and asks.
        let past_grant = self.past_grant(client, resource, flow_before, sent_at + SEND_WINDOW);
        let ignored_expiry = past_grant && expect == Expect::Delivered;
        let expect = if injected && !ignored_expiry {
            expect
        } else {
            Expect::Uncertain
        };
        let unlimited = if alone {
            before.expect_unlimited(client, resource, before.now)
        } else {
            Expect::Uncertain
        };
        let outcome = self.check_probe(client, resource, payload, sent_at, expect, unlimited)?;
        // The disobeying client kept its route: the gateway's check is what refused it.
        if outcome == "checked:refused" && refused_by_gateway {
            self.counts.bump("checked:refused_by_gateway");
        }
        let lost = self.deployment.arrivals(payload).is_empty();
        if past_grant && lost && refused_by_gateway {
            self.counts.bump("checked:refused_after_expiry");
        }
        if outcome == "checked:uncertain" {
            let why = match before.uncertain_because(client, resource, before.now) {
                Some(why) if injected => why,
                None if injected && ignored_expiry => "expiry_ignored",
                Some(_) | None => "not_sent",
            };
            self.counts.bump(format!("uncertain:{why}"));
            if let Some(after) = before.after_fault(why, client, before.now).filter(|_| lost) {
                let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                self.counts.raise(format!("{WORST_LOST}{why}"), ms);
            }
        }
        if outcome == "checked:delivered" {
            self.check_answered(client, resource, payload, sent_at)?;
        }
        if outcome == "checked:delivered" && before.expiring.contains_key(&(client, resource)) {
            self.counts.bump("checked:delivered_expiring");
        }
        let cut = (0..NODES).any(|n| before.portal_unreachable(n, before.now));
        if outcome == "checked:delivered" && cut {
            self.counts.bump("checked:delivered_portal_cut");
        }
        self.counts.bump(format!("proto:{proto:?}").to_lowercase());
        if outcome == "checked:delivered" {
            if let Some(kind) = self.deployment.path_kind(client) {
                self.counts.bump(format!("path:{kind}"));
                let at = self.deployment.elapsed();
                if expect == Expect::Delivered && before.must_be_direct(before.now, at) {
                    if kind == "relayed" {
                        return Err(format!(
                            "c{} is on a relayed path {} s after sending, although its NATs \
                             ({:?}) allow a direct one",
                            client + 1,
                            (at - before.now).as_secs(),
                            self.deployment.nat_types,
                        ));
                    }
                    self.counts.bump("checked:direct");
                }
            }
        }
        Ok(())
    }

    /// Whether the disobeying client's route to `resource` may outlast its flow (which ended
    /// at `flow_before`, as the portal told when the probe was sent, or at the end of the last
    /// one it was seen to have) before `until`.
    fn past_grant(
        &self,
        client: usize,
        resource: usize,
        flow_before: Option<Duration>,
        until: Duration,
    ) -> bool {
        self.disobeying
            && client == HOSTILE
            && flow_before
                .or_else(|| self.hostile_flows.get(&resource).copied())
                .is_some_and(|end| end < until)
    }

    /// Checks that a probe that was required to arrive, sent at `sent_at`, was answered within
    /// [`ANSWER_WITHIN`], and keeps the slowest answer in the counts.
    fn check_answered(
        &mut self,
        client: usize,
        resource: usize,
        payload: &[u8],
        sent_at: Duration,
    ) -> Result<(), String> {
        let echoed = self.deployment.echo_times(client, payload);
        let Some(took) = echoed.first().map(|at| at.saturating_sub(sent_at)) else {
            return Ok(());
        };
        self.counts.raise(
            WORST_ANSWER,
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        );
        if took > ANSWER_WITHIN {
            return Err(format!(
                "c{}'s packet to resource {} was answered {:.2} s after it was sent; a packet \
                 required to arrive is answered within {} s",
                client + 1,
                resource + 1,
                took.as_secs_f64(),
                ANSWER_WITHIN.as_secs()
            ));
        }
        Ok(())
    }

    /// Checks a probe against `expect`, records the outcome in the timeline and the counts, and
    /// tells the model when the pair's route is proven: the probe arrived and came back while
    /// nothing but the expiry of authorizations (`unlimited` is the expectation without it)
    /// allowed it not to.
    fn check_probe(
        &mut self,
        client: usize,
        resource: usize,
        payload: &[u8],
        sent_at: Duration,
        expect: Expect,
        unlimited: Expect,
    ) -> Result<&'static str, String> {
        let w = &mut self.deployment;
        let arrivals = w.arrivals(payload);
        let echoed = w.echoes(client, payload);
        let outcome = check_send(client, resource, payload, &arrivals, echoed, expect)?;
        // In the timeline too: what each packet did is the point of reading one, and how long
        // its answer took is where a slow recovery shows.
        let arrived = arrivals.len();
        let answered = match w.echo_times(client, payload).first() {
            Some(at) => format!(" answered_ms={}", at.saturating_sub(sent_at).as_millis()),
            None => String::new(),
        };
        w.trace.record_at(
            w.elapsed(),
            "driver",
            format_args!(
                "{outcome} c{}->r{} arrived={arrived} echoed={echoed}{answered}",
                client + 1,
                resource + 1
            ),
        );
        self.counts.bump(outcome);
        if arrived == 1 && echoed == 1 && unlimited == Expect::Delivered {
            self.model.note_delivered(client, resource);
        }
        Ok(outcome)
    }
}

/// Runs `transitions` from a fresh world for `seed`; the first failed check ends it and is
/// returned next to the case.
pub fn run_case(seed: u64, transitions: &[Transition]) -> (Case, Result<(), String>) {
    let keep_lines = std::env::var_os("SIM_TRACE").is_some();
    run_case_traced(seed, transitions, keep_lines)
}

/// [`run_case`], keeping the trace's text lines if `keep_lines`.
pub fn run_case_traced(
    seed: u64,
    transitions: &[Transition],
    keep_lines: bool,
) -> (Case, Result<(), String>) {
    let mut case = match Case::start_traced(seed, keep_lines) {
        Ok(case) => case,
        Err(e) => panic!("the world for seed {seed} did not start: {e}"),
    };
    for t in transitions {
        if !case.model.allows(t) {
            continue;
        }
        if let Err(e) = case.step(t) {
            return (case, Err(format!("{t}: {e}")));
        }
    }
    (case, Ok(()))
}

/// How long after the end of an authorization a packet the gateway let through just before
/// it may still reach the resource: the resource link's 10 ms, with room for the steps.
pub const GRANT_IN_FLIGHT: Duration = Duration::from_millis(50);

/// Checks that no copy of a probe reached the resource past the end of the access the portal
/// granted (`granted`, if it granted any: a portal that restarted since knows of none).
pub fn check_granted(
    client: usize,
    resource: usize,
    granted: Option<Duration>,
    arrivals: &[Duration],
) -> Result<(), String> {
    let Some(end) = granted else {
        return Ok(());
    };
    match arrivals.iter().find(|at| **at > end + GRANT_IN_FLIGHT) {
        Some(at) => Err(format!(
            "c{}'s packet reached resource {} at {:.3} s, after its access ended at {} s",
            client + 1,
            resource + 1,
            at.as_secs_f64(),
            end.as_secs()
        )),
        None => Ok(()),
    }
}

/// Checks what became of a probe sent with expectation `expect`, given where it arrived
/// (source, destination per arrival) and how many echoes came back; returns what was checked.
pub fn check_send(
    client: usize,
    resource: usize,
    payload: &[u8],
    arrivals: &[(IpAddr, IpAddr)],
    echoes: usize,
    expect: Expect,
) -> Result<&'static str, String> {
    let expected = (
        client_tunnel_ip(client as u64 + 1),
        IpAddr::V4(RESOURCE_IPS[resource]),
    );
    let what = String::from_utf8_lossy(payload);
    match expect {
        Expect::Delivered => {
            if arrivals != [expected] {
                return Err(format!(
                    "{what} must arrive exactly once, arrived {arrivals:?}"
                ));
            }
            if echoes != 1 {
                return Err(format!(
                    "{what}: its echo must come back exactly once, came {echoes}"
                ));
            }
            Ok("checked:delivered")
        }
        Expect::Refused => {
            if !arrivals.is_empty() {
                return Err(format!("{what} reached a resource it may not reach"));
            }
            Ok("checked:refused")
        }
        Expect::Uncertain => {
            if arrivals.len() > 1 || echoes > 1 {
                return Err(format!("{what} was duplicated"));
            }
            Ok("checked:uncertain")
        }
    }
}

/// The invariants that hold after every step, faults or not.
pub fn check_invariants(w: &Deployment<'static>) -> Result<(), String> {
    // However the nodes (the hostile client among them) use their relays, every relay stays
    // within its quotas.
    for (r, tap) in w.relay_taps.iter().enumerate() {
        let allocations = tap.allocations.borrow();
        let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
        for a in allocations.iter() {
            let max = relay_sim::MAX_PERMISSIONS_PER_ALLOCATION;
            if a.permissions.len() > max {
                return Err(format!(
                    "relay {} allocation {} holds {} permissions, more than {max}",
                    r + 1,
                    a.relay,
                    a.permissions.len()
                ));
            }
            let user = a.username.split_once(':').map_or(&*a.username, |(_, u)| u);
            *per_user.entry(user.to_owned()).or_default() += 1;
        }
        let max = relay_sim::MAX_ALLOCATIONS_PER_USER;
        if let Some((user, n)) = per_user.into_iter().find(|(_, n)| *n > max) {
            return Err(format!(
                "relay {} holds {n} allocations of user {user}, more than {max}",
                r + 1
            ));
        }
        // The portal renews every joined node's credentials at half their lifetime, and the
        // node moves its allocations to them: none ever reaches a relay expired.
        let expired = tap.stats.get().expired_credentials;
        if expired > 0 {
            return Err(format!(
                "relay {} refused {expired} requests with expired credentials",
                r + 1
            ));
        }
    }
    // No packet is ever delivered to the wrong client: every probe echo a client gets names
    // that client as its sender.
    for (i, tap) in w.taps.iter().enumerate() {
        for seen in tap.received.borrow().iter() {
            let Ok(p) = IpPacket::parse(seen.packet.as_slice()) else {
                continue;
            };
            let owner = format!("probe c{} ", i + 1);
            if p.payload().starts_with(b"probe c") && !p.payload().starts_with(owner.as_bytes()) {
                return Err(format!(
                    "client {} got someone else's packet: {:?}",
                    i + 1,
                    String::from_utf8_lossy(p.payload())
                ));
            }
        }
    }
    // Every probe that reached a resource came from its sender's tunnel address.
    for seen in w.resources.arrived.borrow().iter() {
        let Ok(p) = IpPacket::parse(seen.packet.as_slice()) else {
            continue;
        };
        if let Some(&digit) = p.payload().strip_prefix(b"probe c").and_then(|r| r.first()) {
            let sender = u64::from(digit.saturating_sub(b'0'));
            if p.source() != client_tunnel_ip(sender) {
                return Err(format!(
                    "a probe of client {sender} arrived from {}",
                    p.source()
                ));
            }
        }
    }
    Ok(())
}

/// Datagrams the hostile client sends to the other client's relayed address in a spoof.
const INTRUSIONS: usize = 3;

/// A UDP probe to `resource` like [`probe_packet`]'s, from `src`: the checksums are right, only
/// the address gives it away.
fn spoofed_probe(src: IpAddr, resource: usize, payload: &[u8]) -> Vec<u8> {
    let src = std::net::SocketAddr::new(src, 40_000);
    let dst = std::net::SocketAddr::new(IpAddr::V4(RESOURCE_IPS[resource]), 7);
    match IpPacket::udp(src, dst, payload) {
        Ok(p) => p.into_inner(),
        Err(error) => panic!("cannot build a spoofed probe: {error}"),
    }
}
