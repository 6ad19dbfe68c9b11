//! Where the portal's [`Directory`] lives between starts, and how instances share it.
//!
//! A store holds the directory and a log of every [`Change`] committed to it, numbered in commit
//! order ([`ChangeId`]). An instance loads the directory at start, then applies the log from
//! where the snapshot ended ([`Store::changes_after`]): its own admin changes and those another
//! instance committed reach its core the same way, in the same order.
//!
//! [`MemoryStore`] serves the simulation and tests; [`SqlStore`] serves the `portal` binary on
//! SQLite or PostgreSQL.

use std::future::Future;

use crate::directory::{Change, ChangeError, Directory};
use crate::seed::SeedFile;

mod memory;
mod sql;

pub use memory::MemoryStore;
pub use sql::{SqlStore, MAX_CHANGE_LOG, MIGRATIONS};

/// A position in the change log: the id of the last change included. Ids start at 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeId(pub i64);

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The change does not apply to the stored directory; nothing was written.
    #[error(transparent)]
    Refused(#[from] ChangeError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The changes after this position are no longer in the log (it keeps the newest
    /// [`MAX_CHANGE_LOG`]): the directory must be loaded afresh (restart the instance).
    #[error("fell behind the change log: applied up to {applied}, the oldest change kept is {oldest}; restart to load the directory afresh")]
    Behind {
        /// The position asked from.
        applied: i64,
        /// The oldest change still in the log.
        oldest: i64,
    },
    /// The database holds something this portal cannot read.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// Where.
        table: &'static str,
        /// What.
        reason: String,
    },
}

/// A directory and the log position it includes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The directory.
    pub directory: Directory,
    /// The last change it includes.
    pub last: ChangeId,
}

/// Lasting storage for the portal's directory.
pub trait Store: Send + Sync + 'static {
    /// The directory as it is now.
    fn load(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Checks `change` against the stored directory and, if it applies, writes it and appends it
    /// to the log, atomically.
    fn commit(&self, change: &Change) -> impl Future<Output = Result<ChangeId, StoreError>> + Send;

    /// The changes committed after `after`, in order.
    fn changes_after(
        &self,
        after: ChangeId,
    ) -> impl Future<Output = Result<Vec<(ChangeId, Change)>, StoreError>> + Send;
}

/// Adds a seed file's entries to `store`, or updates them where they differ (nothing is removed:
/// entries the file does not name stay). Returns how many changes were committed.
pub async fn import<S: Store>(store: &S, seed: &SeedFile) -> Result<usize, StoreError> {
    let mut current = store.load().await?.directory;
    let mut committed = 0;
    for change in Directory::from_seed(seed).changes() {
        let before = current.clone();
        current.apply(&change)?;
        if current != before {
            store.commit(&change).await?;
            committed += 1;
        }
    }
    Ok(committed)
}
