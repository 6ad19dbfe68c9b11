//! ICE candidates as the node signals and receives them.
//!
//! [`IceCandidate`] orders by priority, highest first, so that adding a sorted list to an ICE
//! agent forms the host-host pair first. Signalled lists are parsed leniently: one malformed
//! entry is skipped and logged, the valid ones are kept.

use std::cmp::Ordering;
use std::fmt;
use std::net::SocketAddr;

/// The kind of a candidate (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateKind {
    /// An address on a local interface.
    Host,
    /// An address learned from the remote's connectivity checks.
    PeerReflexive,
    /// The NAT's public address, learned from a STUN server.
    ServerReflexive,
    /// An address on a TURN relay.
    Relayed,
}

/// Why a candidate string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// The string is not an RFC 8839 candidate attribute.
    #[error("malformed candidate: {0}")]
    Malformed(String),
    /// Only UDP candidates are used.
    #[error("unsupported transport in candidate")]
    NotUdp,
}

/// An ICE candidate, ordered by priority (highest first).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IceCandidate {
    inner: is::Candidate,
}

impl IceCandidate {
    /// A host candidate for a local address.
    pub fn host(addr: SocketAddr) -> Result<Self, CandidateError> {
        is::Candidate::host(addr, "udp")
            .map(Self::from)
            .map_err(|e| CandidateError::Malformed(e.to_string()))
    }

    /// A server-reflexive candidate: `addr` as seen by a STUN server, `base` the local address.
    pub fn server_reflexive(addr: SocketAddr, base: SocketAddr) -> Result<Self, CandidateError> {
        is::Candidate::server_reflexive(addr, base, "udp")
            .map(Self::from)
            .map_err(|e| CandidateError::Malformed(e.to_string()))
    }

    /// A relayed candidate: `addr` on the relay, `local` the address that talks to the relay.
    pub fn relayed(addr: SocketAddr, local: SocketAddr) -> Result<Self, CandidateError> {
        is::Candidate::relayed(addr, local, "udp")
            .map(Self::from)
            .map_err(|e| CandidateError::Malformed(e.to_string()))
    }

    /// Parses one signalled candidate (`candidate:1 1 udp 2113929471 203.0.113.100 10100 typ host`).
    pub fn parse(s: &str) -> Result<Self, CandidateError> {
        let inner = is::Candidate::from_sdp_string(s.trim())
            .map_err(|e| CandidateError::Malformed(e.to_string()))?;
        if inner.proto() != is::Protocol::Udp {
            return Err(CandidateError::NotUdp);
        }
        Ok(Self { inner })
    }

    /// Parses a signalled list, keeping every valid candidate, sorted host-first by priority.
    ///
    /// A list with one bad entry is still useful: the bad one is skipped and logged at DEBUG.
    pub fn parse_list<'a>(list: impl IntoIterator<Item = &'a str>) -> Vec<Self> {
        let mut out: Vec<Self> = list
            .into_iter()
            .filter_map(|s| match Self::parse(s) {
                Ok(c) => Some(c),
                Err(error) => {
                    tracing::debug!(%error, candidate = s, "skipping candidate");
                    None
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The candidate's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// The candidate's kind.
    pub fn kind(&self) -> CandidateKind {
        match self.inner.kind() {
            is::CandidateKind::Host => CandidateKind::Host,
            is::CandidateKind::PeerReflexive => CandidateKind::PeerReflexive,
            is::CandidateKind::ServerReflexive => CandidateKind::ServerReflexive,
            is::CandidateKind::Relayed => CandidateKind::Relayed,
        }
    }

    /// RFC 8445 priority.
    pub fn priority(&self) -> u32 {
        self.inner.prio()
    }

    /// The string to signal to the remote peer.
    pub fn to_sdp_string(&self) -> String {
        self.inner.to_sdp_string()
    }

    /// The candidate as the ICE agent takes it.
    pub fn as_ice(&self) -> &is::Candidate {
        &self.inner
    }
}

impl From<is::Candidate> for IceCandidate {
    fn from(inner: is::Candidate) -> Self {
        Self { inner }
    }
}

impl Ord for IceCandidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .priority()
            .cmp(&self.priority())
            .then_with(|| self.addr().cmp(&other.addr()))
            .then_with(|| self.kind().cmp(&other.kind()))
    }
}

impl PartialOrd for IceCandidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for IceCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self.kind(), self.addr())
    }
}

impl fmt::Display for IceCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind_str(), self.addr())
    }
}

impl IceCandidate {
    fn kind_str(&self) -> &'static str {
        match self.kind() {
            CandidateKind::Host => "host",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::Relayed => "relay",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn signalled_string_round_trips() {
        let c = IceCandidate::host(addr("198.51.100.7:51820")).unwrap();
        let parsed = IceCandidate::parse(&c.to_sdp_string()).unwrap();
        assert_eq!(parsed.addr(), c.addr());
        assert_eq!(parsed.kind(), CandidateKind::Host);
        assert_eq!(parsed.priority(), c.priority());
    }

    #[test]
    fn host_sorts_before_reflexive_and_relayed() {
        let host = IceCandidate::host(addr("10.0.0.2:1000")).unwrap();
        let srflx =
            IceCandidate::server_reflexive(addr("198.51.100.1:4000"), addr("10.0.0.2:1000"))
                .unwrap();
        let relay =
            IceCandidate::relayed(addr("203.0.113.9:50000"), addr("10.0.0.2:1000")).unwrap();
        let mut v = vec![relay.clone(), srflx.clone(), host.clone()];
        v.sort();
        assert_eq!(v, vec![host, srflx, relay]);
    }

    #[test]
    fn one_malformed_candidate_does_not_spoil_the_list() {
        let good1 = IceCandidate::host(addr("10.0.0.2:1000"))
            .unwrap()
            .to_sdp_string();
        let good2 = IceCandidate::relayed(addr("203.0.113.9:50000"), addr("10.0.0.2:1000"))
            .unwrap()
            .to_sdp_string();
        let list = [
            good2.as_str(),
            "candidate:garbage",
            "candidate:1 1 tcp 2113929471 203.0.113.100 10100 typ host",
            "",
            good1.as_str(),
        ];
        let parsed = IceCandidate::parse_list(list);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].kind(), CandidateKind::Host, "host first");
        assert_eq!(parsed[1].kind(), CandidateKind::Relayed);
    }

    #[test]
    fn parse_never_panics_on_junk() {
        for s in [
            "candidate:",
            "candidate:1 1 udp x 1.2.3.4 5 typ host",
            "candidate:1 1 udp 1 1.2.3.4 99999 typ host",
            "candidate:1 1 udp 1 1.2.3.4 5 typ nonsense",
            "\u{0}\u{ffff}",
        ] {
            assert!(IceCandidate::parse(s).is_err(), "{s:?}");
        }
    }
}
