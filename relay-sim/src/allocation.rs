//! One TURN allocation: its relayed port, lifetime, permissions and channel bindings.
//!
//! Pure bookkeeping with explicit time: the server decides what to do, this module only records
//! state and answers questions about it at a given `now`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use stun_codec::TransactionId;

/// The 5-tuple of a client's allocation over UDP: client address and the server address it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FiveTuple {
    /// The client's address as the relay sees it (its server-reflexive address).
    pub client: SocketAddr,
    /// The relay's address that the client talks to.
    pub server: SocketAddr,
}

/// Why a channel cannot be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The channel number is bound to another peer.
    #[error("channel {channel:#06x} is bound to {bound}")]
    ChannelTaken {
        /// The channel number asked for.
        channel: u16,
        /// The peer it is bound to.
        bound: SocketAddr,
    },
    /// The peer is bound to another channel number.
    #[error("peer {peer} is bound to channel {bound:#06x}")]
    PeerTaken {
        /// The peer asked for.
        peer: SocketAddr,
        /// The channel it is bound to.
        bound: u16,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    pub(crate) peer: SocketAddr,
    pub(crate) expires: Instant,
}

/// State of one allocation.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) five_tuple: FiveTuple,
    pub(crate) relay_port: u16,
    /// The USERNAME that created the allocation, or the renewed one of the same user that
    /// replaced it; other users' requests get 441.
    pub(crate) username: Box<str>,
    pub(crate) expires: Instant,
    /// The creating transaction and its encoded success response, for retransmitted Allocates.
    pub(crate) allocate_transaction: TransactionId,
    pub(crate) allocate_response: Box<[u8]>,
    /// Permission expiry per peer IP.
    pub(crate) permissions: BTreeMap<IpAddr, Instant>,
    pub(crate) channels: BTreeMap<u16, Channel>,
    pub(crate) channel_by_peer: BTreeMap<SocketAddr, u16>,
}

impl Allocation {
    pub(crate) fn new(
        five_tuple: FiveTuple,
        relay_port: u16,
        username: &str,
        expires: Instant,
        allocate_transaction: TransactionId,
    ) -> Self {
        Self {
            five_tuple,
            relay_port,
            username: username.into(),
            expires,
            allocate_transaction,
            allocate_response: Box::default(),
            permissions: BTreeMap::new(),
            channels: BTreeMap::new(),
            channel_by_peer: BTreeMap::new(),
        }
    }

    pub(crate) fn is_live(&self, now: Instant) -> bool {
        now < self.expires
    }

    pub(crate) fn has_permission(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&peer)
            .is_some_and(|expires| now < *expires)
    }

    /// Installs or refreshes a permission; returns the previous expiry (to cancel its timer).
    pub(crate) fn permit(&mut self, peer: IpAddr, expires: Instant) -> Option<Instant> {
        self.permissions.insert(peer, expires)
    }

    /// The peer a live channel is bound to.
    pub(crate) fn channel_peer(&self, channel: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .get(&channel)
            .filter(|c| now < c.expires)
            .map(|c| c.peer)
    }

    /// The live channel bound to `peer`.
    pub(crate) fn peer_channel(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let channel = *self.channel_by_peer.get(&peer)?;
        self.channel_peer(channel, now).map(|_| channel)
    }

    /// Checks that `channel` may be bound to `peer` (new binding or refresh of the same pair).
    pub(crate) fn check_bind(&self, channel: u16, peer: SocketAddr) -> Result<(), BindError> {
        if let Some(existing) = self.channels.get(&channel) {
            if existing.peer != peer {
                return Err(BindError::ChannelTaken {
                    channel,
                    bound: existing.peer,
                });
            }
        }
        if let Some(&bound) = self.channel_by_peer.get(&peer) {
            if bound != channel {
                return Err(BindError::PeerTaken { peer, bound });
            }
        }
        Ok(())
    }

    /// Binds or refreshes; returns the previous expiry of the binding. Call [`Self::check_bind`] first.
    pub(crate) fn bind(
        &mut self,
        channel: u16,
        peer: SocketAddr,
        expires: Instant,
    ) -> Option<Instant> {
        self.channel_by_peer.insert(peer, channel);
        self.channels
            .insert(channel, Channel { peer, expires })
            .map(|c| c.expires)
    }

    /// Removes a channel binding if it has expired at `now`.
    pub(crate) fn expire_channel(&mut self, channel: u16, now: Instant) -> bool {
        match self.channels.get(&channel) {
            Some(c) if now >= c.expires => {
                let peer = c.peer;
                self.channels.remove(&channel);
                self.channel_by_peer.remove(&peer);
                true
            }
            Some(_) | None => false,
        }
    }

    /// Removes a permission if it has expired at `now`.
    pub(crate) fn expire_permission(&mut self, peer: IpAddr, now: Instant) -> bool {
        match self.permissions.get(&peer) {
            Some(expires) if now >= *expires => {
                self.permissions.remove(&peer);
                true
            }
            Some(_) | None => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests take a real Instant as their base
mod tests {
    use super::*;
    use std::time::Duration;

    fn allocation(now: Instant) -> Allocation {
        let five_tuple = FiveTuple {
            client: "192.0.2.1:1000".parse().unwrap(),
            server: "192.0.2.100:3478".parse().unwrap(),
        };
        Allocation::new(
            five_tuple,
            50000,
            "1:a",
            now + Duration::from_secs(600),
            TransactionId::new([0; 12]),
        )
    }

    #[test]
    fn channel_rules() {
        let now = Instant::now();
        let mut a = allocation(now);
        let p1: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let p2: SocketAddr = "198.51.100.2:2".parse().unwrap();
        a.check_bind(0x4000, p1).unwrap();
        a.bind(0x4000, p1, now + Duration::from_secs(600));
        assert_eq!(a.check_bind(0x4000, p1), Ok(()));
        assert!(matches!(
            a.check_bind(0x4000, p2),
            Err(BindError::ChannelTaken { .. })
        ));
        assert!(matches!(
            a.check_bind(0x4001, p1),
            Err(BindError::PeerTaken { .. })
        ));
        assert_eq!(a.peer_channel(p1, now), Some(0x4000));
        assert_eq!(a.channel_peer(0x4000, now + Duration::from_secs(600)), None);
        assert!(!a.expire_channel(0x4000, now));
        assert!(a.expire_channel(0x4000, now + Duration::from_secs(600)));
        assert_eq!(a.check_bind(0x4001, p1), Ok(()));
    }

    #[test]
    fn permission_expiry() {
        let now = Instant::now();
        let mut a = allocation(now);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(!a.has_permission(ip, now));
        a.permit(ip, now + Duration::from_secs(300));
        assert!(a.has_permission(ip, now + Duration::from_secs(299)));
        assert!(!a.has_permission(ip, now + Duration::from_secs(300)));
        assert!(a.expire_permission(ip, now + Duration::from_secs(300)));
    }
}
