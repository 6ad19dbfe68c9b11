//! The gateway's authorizations: which client may reach which resource, until when.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::ids::{ClientId, ResourceId};

/// Authorizations keyed by (client, resource), with an index by expiry so that the next expiry
/// is known without a scan. Everything removed is returned in (client, resource) order.
#[derive(Debug, Default)]
pub(super) struct Authorizations {
    by_flow: BTreeMap<(ClientId, ResourceId), Instant>,
    by_expiry: BTreeSet<(Instant, ClientId, ResourceId)>,
}

impl Authorizations {
    /// Adds an authorization or moves its expiry.
    pub(super) fn insert(&mut self, cid: ClientId, rid: ResourceId, expires: Instant) {
        if let Some(old) = self.by_flow.insert((cid, rid), expires) {
            self.by_expiry.remove(&(old, cid, rid));
        }
        self.by_expiry.insert((expires, cid, rid));
    }

    /// Removes one authorization; whether there was one.
    pub(super) fn remove(&mut self, cid: ClientId, rid: ResourceId) -> bool {
        match self.by_flow.remove(&(cid, rid)) {
            Some(expires) => self.by_expiry.remove(&(expires, cid, rid)),
            None => false,
        }
    }

    /// When the authorization of `cid` for `rid` ends, if there is one.
    pub(super) fn expiry(&self, cid: ClientId, rid: ResourceId) -> Option<Instant> {
        self.by_flow.get(&(cid, rid)).copied()
    }

    /// The resources `cid` is authorized for and until when, by resource id.
    pub(super) fn of_client(
        &self,
        cid: ClientId,
    ) -> impl Iterator<Item = (ResourceId, Instant)> + '_ {
        self.by_flow
            .range((cid, ResourceId(0))..=(cid, ResourceId(u64::MAX)))
            .map(|((_, rid), expires)| (*rid, *expires))
    }

    /// Whether `cid` has any authorization left.
    pub(super) fn has_client(&self, cid: ClientId) -> bool {
        self.of_client(cid).next().is_some()
    }

    /// The earliest expiry.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(t, _, _)| *t)
    }

    /// Every authorization, by (client, resource).
    pub(super) fn iter(&self) -> impl Iterator<Item = (ClientId, ResourceId, Instant)> + '_ {
        self.by_flow.iter().map(|((c, r), t)| (*c, *r, *t))
    }

    /// Removes what expired at or before `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(ClientId, ResourceId)> {
        if self.next_expiry().is_none_or(|t| t > now) {
            return Vec::new();
        }
        self.remove_where(|_, expires| expires <= now)
    }

    /// Removes every authorization for `rid`.
    pub(super) fn remove_resource(&mut self, rid: ResourceId) -> Vec<(ClientId, ResourceId)> {
        self.remove_where(|(_, r), _| r == rid)
    }

    /// Removes every authorization `keep` rejects.
    pub(super) fn retain(
        &mut self,
        mut keep: impl FnMut((ClientId, ResourceId)) -> bool,
    ) -> Vec<(ClientId, ResourceId)> {
        self.remove_where(|flow, _| !keep(flow))
    }

    fn remove_where(
        &mut self,
        mut remove: impl FnMut((ClientId, ResourceId), Instant) -> bool,
    ) -> Vec<(ClientId, ResourceId)> {
        let removed: Vec<_> = self
            .by_flow
            .extract_if(.., |flow, expires| remove(*flow, *expires))
            .collect();
        removed
            .into_iter()
            .map(|((cid, rid), expires)| {
                self.by_expiry.remove(&(expires, cid, rid));
                (cid, rid)
            })
            .collect()
    }
}
