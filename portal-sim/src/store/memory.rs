//! [`MemoryStore`]: a store that lives as long as the value (the simulation keeps one across
//! portal restarts, as a database outlives the process).

use std::sync::{Arc, Mutex, MutexGuard};

use super::{ChangeId, Snapshot, Store, StoreError};
use crate::directory::{Change, ChangeError, Directory};

#[derive(Debug, Default)]
struct Inner {
    directory: Directory,
    log: Vec<Change>,
}

/// A store in memory; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// A store holding `directory`, with an empty log.
    pub fn new(directory: Directory) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                directory,
                log: Vec::new(),
            })),
        }
    }

    /// The directory as it is now (what [`Store::load`] gives, without waiting).
    pub fn directory(&self) -> Directory {
        self.lock().directory.clone()
    }

    /// [`Store::commit`], without waiting.
    pub fn commit_now(&self, change: &Change) -> Result<ChangeId, ChangeError> {
        let mut inner = self.lock();
        inner.directory.apply(change)?;
        inner.log.push(change.clone());
        Ok(Self::last(&inner))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn last(inner: &Inner) -> ChangeId {
        ChangeId(i64::try_from(inner.log.len()).unwrap_or(i64::MAX))
    }
}

impl Store for MemoryStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        let inner = self.lock();
        Ok(Snapshot {
            directory: inner.directory.clone(),
            last: Self::last(&inner),
        })
    }

    async fn commit(&self, change: &Change) -> Result<ChangeId, StoreError> {
        Ok(self.commit_now(change)?)
    }

    async fn changes_after(&self, after: ChangeId) -> Result<Vec<(ChangeId, Change)>, StoreError> {
        let inner = self.lock();
        let start = usize::try_from(after.0).unwrap_or(0);
        Ok(inner
            .log
            .iter()
            .enumerate()
            .skip(start)
            .map(|(i, c)| {
                (
                    ChangeId(i64::try_from(i + 1).unwrap_or(i64::MAX)),
                    c.clone(),
                )
            })
            .collect())
    }
}
