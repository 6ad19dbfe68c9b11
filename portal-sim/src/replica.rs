//! [`Replica`]: keeps a running portal's core in step with its store.
//!
//! Every change reaches the core from the store's log, in log order: an admin change is first
//! committed ([`Replica::submit`]), then read back with everything committed before it; a change
//! another instance committed arrives the same way on the next [`Replica::catch_up`] (run every
//! [`Replica::run`] period, and at once after each submit). What the core records by itself (a
//! key's new owner) goes the other way: it is committed on the next catch-up, and kept for a
//! later one if the database is down.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::directory::Change;
use crate::server::Server;
use crate::store::{ChangeId, Store, StoreError};

/// How often [`Replica::run`] looks for other instances' changes by default: the bound on how
/// long a change made through one instance takes to reach nodes connected to another.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Recorded changes kept while the database is down, at most; older ones are dropped first
/// (each is a key owner, which the next join of that node records again).
pub const MAX_PENDING_RECORDED: usize = 4096;

struct Cursor {
    /// The last change applied to the core.
    applied: ChangeId,
    /// Recorded by the core, not yet committed, oldest first.
    pending: VecDeque<Change>,
}

/// A portal core and the store it follows.
pub struct Replica<S> {
    server: Server,
    store: S,
    cursor: Mutex<Cursor>,
}

impl<S: Store> Replica<S> {
    /// A replica of `store` in `server`'s core, which already holds the store's directory up to
    /// `applied` (from [`Store::load`]).
    pub fn new(server: Server, store: S, applied: ChangeId) -> Self {
        Self {
            server,
            store,
            cursor: Mutex::new(Cursor {
                applied,
                pending: VecDeque::new(),
            }),
        }
    }

    /// The server it keeps in step.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The store it follows.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Commits an administrative change and applies it (with whatever was committed before
    /// it) to the core, so nodes are told before this returns. A change the directory refuses
    /// is refused before anything is written.
    pub async fn submit(&self, change: &Change) -> Result<ChangeId, StoreError> {
        self.server
            .with_portal(|portal, _| portal.directory().check(change))?;
        let id = self.store.commit(change).await?;
        tracing::info!(change_id = id.0, ?change, "Change committed");
        self.catch_up().await?;
        Ok(id)
    }

    /// Stores what the core recorded and applies every change committed since the last call.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let mut cursor = self.cursor.lock().await;
        let recorded = self.server.with_portal(|portal, _| {
            std::iter::from_fn(|| portal.poll_recorded()).collect::<Vec<_>>()
        });
        let dropped = keep_pending(&mut cursor.pending, recorded, MAX_PENDING_RECORDED);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                limit = MAX_PENDING_RECORDED,
                "Dropping recorded changes the database has not taken"
            );
        }
        while let Some(change) = cursor.pending.front() {
            self.store.commit(change).await?;
            cursor.pending.pop_front();
        }
        let changes = self.store.changes_after(cursor.applied).await?;
        let Some(&(last, _)) = changes.last() else {
            return Ok(());
        };
        self.server.with_portal(|portal, now| {
            for (id, change) in &changes {
                if let Err(error) = portal.apply(change, now) {
                    // The store checked it against the stored directory; the core can only
                    // disagree about a change it made itself (a key owner) or already has.
                    tracing::debug!(change_id = id.0, %error, "Change already in effect");
                }
            }
        });
        cursor.applied = last;
        Ok(())
    }

    /// Catches up every `period` (another instance's changes arrive within it), riding out
    /// database failures, until the instance falls behind the change log
    /// ([`StoreError::Behind`]), which it returns: the instance must restart.
    pub async fn run(&self, period: Duration) -> StoreError {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.catch_up().await {
                Ok(()) => {}
                Err(error @ StoreError::Behind { .. }) => return error,
                Err(error) => tracing::warn!(%error, "Cannot reach the store; trying again"),
            }
        }
    }
}

/// Appends `recorded` to `pending` and drops the oldest beyond `limit`; how many were dropped.
fn keep_pending(pending: &mut VecDeque<Change>, recorded: Vec<Change>, limit: usize) -> usize {
    pending.extend(recorded);
    let excess = pending.len().saturating_sub(limit);
    pending.drain(..excess);
    excess
}

#[cfg(test)]
mod tests {
    use node_proto::ids::ClientId;
    use node_proto::portal::PublicKey;

    use super::*;
    use crate::Identity;

    fn owner(n: usize) -> Change {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(n as u64).to_le_bytes());
        Change::OwnKey {
            public_key: PublicKey::from_bytes(key),
            node: Identity::Client(ClientId(1)),
        }
    }

    #[test]
    fn pending_recorded_changes_stop_at_their_cap_dropping_the_oldest() {
        let mut pending = VecDeque::new();
        let recorded: Vec<Change> = (0..MAX_PENDING_RECORDED).map(owner).collect();
        assert_eq!(
            keep_pending(&mut pending, recorded, MAX_PENDING_RECORDED),
            0
        );
        assert_eq!(pending.len(), MAX_PENDING_RECORDED);
        let one_more = vec![owner(MAX_PENDING_RECORDED)];
        assert_eq!(
            keep_pending(&mut pending, one_more, MAX_PENDING_RECORDED),
            1
        );
        assert_eq!(pending.len(), MAX_PENDING_RECORDED);
        assert_eq!(pending.front(), Some(&owner(1)));
        assert_eq!(pending.back(), Some(&owner(MAX_PENDING_RECORDED)));
    }
}
