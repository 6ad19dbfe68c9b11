//! ICE for one connection: str0m's sans-IO agent (`is`), set up for our role, with the seeded
//! randomness it draws from.
//!
//! `is` draws transaction ids from fastrand's thread-local generator. Every call that may draw
//! goes through [`Ice::seeded`], which first reseeds that generator from the connection's own
//! seeded one, so two runs of the same seed send the same bytes whatever else ran on the thread.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use is::{IceAgent, IceCreds};

use crate::types::{Credentials, Role};
use crate::{CandidateKind, IceCandidate};

pub(crate) struct Ice {
    agent: IceAgent,
    rng: fastrand::Rng,
}

impl Ice {
    /// An agent for `role` (the client controls), with both sides' credentials.
    pub(crate) fn new(
        role: Role,
        local: &Credentials,
        remote: &Credentials,
        tie_breaker: u64,
        seed: u64,
    ) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        fastrand::seed(rng.u64(..));
        let mut agent = IceAgent::new(ice_creds(local));
        agent.set_controlling(role == Role::Client);
        agent.set_control_tie_breaker(tie_breaker);
        agent.set_remote_credentials(ice_creds(remote));
        Self { agent, rng }
    }

    /// The agent, for a call that may draw random numbers.
    pub(crate) fn seeded(&mut self) -> &mut IceAgent {
        fastrand::seed(self.rng.u64(..));
        &mut self.agent
    }

    /// The agent, for a call that continues the draws of the last [`Ice::seeded`] one, or
    /// draws none.
    pub(crate) fn agent_mut(&mut self) -> &mut IceAgent {
        &mut self.agent
    }

    pub(crate) fn agent(&self) -> &IceAgent {
        &self.agent
    }

    /// Our candidates, highest priority first.
    pub(crate) fn local_candidates(&self) -> Vec<IceCandidate> {
        let mut v: Vec<_> = self
            .agent
            .local_candidates()
            .map(IceCandidate::from)
            .collect();
        v.sort();
        v
    }

    /// Addresses of the peer's candidates.
    pub(crate) fn remote_candidate_addrs(&self) -> Vec<SocketAddr> {
        self.agent.remote_candidates().map(|c| c.addr()).collect()
    }

    /// Whether a check from `from`, an address the agent does not know, would be one
    /// peer-reflexive candidate too many: at most `max` are learned from checks that arrived
    /// directly, and `max` from checks that a relay delivered (`via_relay`; `relayed` holds the
    /// addresses learned that way).
    pub(crate) fn too_many_peer_reflexive(
        &self,
        from: SocketAddr,
        via_relay: bool,
        relayed: &BTreeSet<SocketAddr>,
        max: usize,
    ) -> bool {
        let mut peer_reflexive = 0;
        for c in self.agent.remote_candidates() {
            if c.addr() == from {
                return false;
            }
            if c.kind() == is::CandidateKind::PeerReflexive
                && relayed.contains(&c.addr()) == via_relay
            {
                peer_reflexive += 1;
            }
        }
        peer_reflexive >= max
    }

    /// The kind of the peer's candidate at `addr`, if the agent holds one.
    pub(crate) fn remote_candidate_kind(&self, addr: SocketAddr) -> Option<CandidateKind> {
        let candidate = self.agent.remote_candidates().find(|c| c.addr() == addr)?;
        Some(match candidate.kind() {
            is::CandidateKind::Host => CandidateKind::Host,
            is::CandidateKind::PeerReflexive => CandidateKind::PeerReflexive,
            is::CandidateKind::ServerReflexive => CandidateKind::ServerReflexive,
            is::CandidateKind::Relayed => CandidateKind::Relayed,
        })
    }

    /// Whether the agent holds a remote candidate at `addr`.
    pub(crate) fn has_remote_candidate(&self, addr: SocketAddr) -> bool {
        self.agent.remote_candidates().any(|c| c.addr() == addr)
    }
}

fn ice_creds(c: &Credentials) -> IceCreds {
    IceCreds {
        ufrag: c.ufrag.clone(),
        pass: c.password.clone(),
    }
}
