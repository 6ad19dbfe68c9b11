//! Observers on the trace: invariants over what the nodes hold and do between steps, beside the
//! model's per-packet expectations. A bug of these kinds (a handshake storm, a tunnel on a stale
//! preshared key, a dead relay's candidates kept, an allocation left to run out) leaves every
//! packet's fate as the model wants it, so only an observer sees it.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::deployment::Deployment;
use super::model::{node_name, Model, CLIENTS, NODES};

/// Handshake initiations one connection may send in a minute: boringtun retries an unanswered
/// one every 5 s (12 a minute), and a new PSK or a roll-over adds one now and then.
pub const MAX_HANDSHAKES_PER_MINUTE: u64 = 15;

const MINUTE: Duration = Duration::from_secs(60);

/// The least lifetime a node's allocation may have left at a running relay. The node refreshes
/// at half the lifetime (300 s of the relay's 600 s) and retransmits a lost refresh for
/// seconds: an allocation this close to its end was not refreshed in time, and would take the
/// node's relayed candidate, and every path on it, with it.
pub const ALLOCATION_MIN_REMAINING: Duration = Duration::from_secs(60);

/// What the observers keep between steps.
#[derive(Debug, Default)]
pub struct Observers {
    /// Each node's handshake initiations so far at the ends of the last transitions, the
    /// oldest a minute or more ago (see [`Observers::check_handshake_rate`]).
    handshake_samples: [VecDeque<(Duration, u64)>; NODES],
}

impl Observers {
    /// Every observer, after a transition.
    pub fn check(&mut self, w: &Deployment<'static>, model: &Model) -> Result<(), String> {
        self.check_handshake_rate(w)?;
        Self::check_relays_forgotten(w, model)?;
        Self::check_allocations_refreshed(w, model)?;
        Self::check_psk_generation(w, model)
    }

    /// Handshake storms: no node's connections send more than [`MAX_HANDSHAKES_PER_MINUTE`]
    /// initiations each a minute (measured between the ends of transitions, over the shortest
    /// stretch of at least a minute, pro rata).
    fn check_handshake_rate(&mut self, w: &Deployment<'static>) -> Result<(), String> {
        let now = w.elapsed();
        let totals = [
            w.taps[0].handshakes.total(),
            w.taps[1].handshakes.total(),
            w.gateway.handshakes.total(),
        ];
        for (node, total) in totals.into_iter().enumerate() {
            let samples = &mut self.handshake_samples[node];
            samples.push_back((now, total));
            while samples.len() > 1 && samples[1].0 + MINUTE <= now {
                samples.pop_front();
            }
            let (since, before) = samples[0];
            let stretch = now - since;
            if stretch < MINUTE {
                continue;
            }
            // One connection per client; the gateway has one per client.
            let connections = if node < CLIENTS { 1 } else { CLIENTS as u64 };
            let millis = u64::try_from(stretch.as_millis()).unwrap_or(u64::MAX);
            let allowed = (MAX_HANDSHAKES_PER_MINUTE * connections).saturating_mul(millis);
            let allowed = allowed.div_ceil(60_000);
            let sent = total - before;
            if sent > allowed {
                return Err(format!(
                    "{} sent {sent} handshake initiations in {} s, more than {allowed}",
                    node_name(node),
                    stretch.as_secs()
                ));
            }
        }
        Ok(())
    }

    /// A withdrawn or dead relay's candidates are gone from every node within their bound
    /// ([`Model::relays_to_be_forgotten`]).
    fn check_relays_forgotten(w: &Deployment<'static>, model: &Model) -> Result<(), String> {
        let now = w.elapsed();
        for r in model.relays_to_be_forgotten(now) {
            let ip = w.relay_ip(r);
            let held = [
                &*w.taps[0].relayed_candidates.borrow(),
                &*w.taps[1].relayed_candidates.borrow(),
                &*w.gateway.relayed_candidates.borrow(),
            ];
            let on_relay =
                |node: &BTreeSet<SocketAddr>| node.iter().find(|a| a.ip() == ip).copied();
            if let Some((node, addr)) = held
                .iter()
                .enumerate()
                .find_map(|(n, h)| on_relay(h).map(|a| (n, a)))
            {
                let what = match model.relay_withdrawn_at[r] {
                    Some(at) => format!("withdrawn at {} s", at.as_secs()),
                    None => "dead".to_owned(),
                };
                return Err(format!(
                    "{} still holds the relayed candidate {addr} on relay {} ({what})",
                    node_name(node),
                    r + 1
                ));
            }
        }
        Ok(())
    }

    /// Every allocation a node holds (its own relayed addresses) at a running relay has at least
    /// [`ALLOCATION_MIN_REMAINING`] of its lifetime left there.
    fn check_allocations_refreshed(w: &Deployment<'static>, model: &Model) -> Result<(), String> {
        let now = w.elapsed();
        let held = [
            &*w.taps[0].own_relayed.borrow(),
            &*w.taps[1].own_relayed.borrow(),
            &*w.gateway.own_relayed.borrow(),
        ];
        for (r, tap) in w.relay_taps.iter().enumerate() {
            if !model.relays_up[r] {
                continue;
            }
            let expiries = tap.expiries.borrow();
            for (node, addrs) in held.iter().enumerate() {
                for addr in addrs.iter() {
                    let Some(expires) = expiries.get(addr) else {
                        continue;
                    };
                    let left = expires.saturating_sub(now);
                    if left < ALLOCATION_MIN_REMAINING {
                        return Err(format!(
                            "{}'s allocation {addr} on relay {} has {} s left: not refreshed",
                            node_name(node),
                            r + 1,
                            left.as_secs()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every established tunnel of a pair the portal's current generation keyed uses that
    /// key, at both ends (a portal restart rotates them all), unless the portal cannot reach
    /// one of them (a cut link, and the rejoin after it).
    fn check_psk_generation(w: &Deployment<'static>, model: &Model) -> Result<(), String> {
        let now = w.elapsed();
        for client in 0..CLIENTS {
            let cut =
                model.portal_unreachable(client, now) || model.portal_unreachable(CLIENTS, now);
            let Some(current) = w.portal_psk(client).filter(|_| !cut) else {
                continue;
            };
            let cid = node_core::ids::ClientId(client as u64 + 1);
            let ends = [
                ("client", w.taps[client].psk.get()),
                ("gateway", w.gateway.psks.borrow().get(&cid).copied()),
            ];
            for (end, psk) in ends {
                if psk.is_some_and(|p| p != current) {
                    return Err(format!(
                        "the {end} end of c{}'s tunnel uses a preshared key the portal no longer \
                         gives it",
                        client + 1
                    ));
                }
            }
        }
        Ok(())
    }
}
