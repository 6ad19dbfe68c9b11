//! Connections replaced by new parameters, kept a moment for the data already on its way.
//!
//! When the portal hands both ends of a connection new parameters (a new preshared key after a
//! portal restart, new ICE credentials), the end told first replaces its connection while the
//! other still sends on the old session until it is told too: at least the portal's round trip
//! through the other end. Dropped, those packets are lost for good (WireGuard does not send data
//! again), and a portal restart must not interrupt an established tunnel. The replaced
//! connection's session therefore still opens data packets for [`RETIRED_GRACE`]; it sends
//! nothing and is reached by its index only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::wireguard::ConnIndex;

/// How long a replaced connection still opens data packets sent on its session.
pub const RETIRED_GRACE: Duration = Duration::from_secs(5);

/// The replaced connections: at most one per peer (a second replacement retires the one it
/// replaces in turn), so never more than the connections themselves.
pub(super) struct Retired<TId> {
    by_index: BTreeMap<ConnIndex, TId>,
    by_id: BTreeMap<TId, (Connection, Instant)>,
}

impl<TId: Copy + Ord> Retired<TId> {
    pub(super) fn new() -> Self {
        Self {
            by_index: BTreeMap::new(),
            by_id: BTreeMap::new(),
        }
    }

    /// Keeps `conn`, just replaced as `id`'s connection, until `now` + [`RETIRED_GRACE`].
    pub(super) fn retire(&mut self, id: TId, conn: Connection, now: Instant) {
        let index = conn.index;
        if let Some((older, _)) = self.by_id.insert(id, (conn, now + RETIRED_GRACE)) {
            self.by_index.remove(&older.index);
        }
        self.by_index.insert(index, id);
    }

    /// The retired connection whose index is `index`, while its grace lasts.
    pub(super) fn get_mut(
        &mut self,
        index: ConnIndex,
        now: Instant,
    ) -> Option<(TId, &mut Connection)> {
        let id = *self.by_index.get(&index)?;
        let (conn, until) = self.by_id.get_mut(&id)?;
        (now < *until).then_some((id, conn))
    }

    /// Whether `index` is a retired connection's (so not free for a new one yet).
    pub(super) fn holds_index(&self, index: ConnIndex) -> bool {
        self.by_index.contains_key(&index)
    }

    /// Forgets the connections whose grace is over.
    pub(super) fn expire(&mut self, now: Instant) {
        if self.by_id.values().all(|(_, until)| now < *until) {
            return;
        }
        let by_index = &mut self.by_index;
        self.by_id.retain(|_, (conn, until)| {
            let keep = now < *until;
            if !keep {
                by_index.remove(&conn.index);
            }
            keep
        });
    }

    /// Forgets `id`'s retired connection (the peer is gone).
    pub(super) fn remove(&mut self, id: TId) {
        if let Some((conn, _)) = self.by_id.remove(&id) {
            self.by_index.remove(&conn.index);
        }
    }

    /// How many are kept.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}
