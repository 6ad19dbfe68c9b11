//! A longest-prefix-match table of networks (CIDR ranges and single hosts).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::portal::IpNetwork;

/// Values keyed by network; a lookup finds the most specific network containing an address.
///
/// One exact-match map per prefix length, searched from the longest prefix down: a lookup costs
/// at most one map lookup per prefix length in use, which is a handful in practice.
#[derive(Debug, Clone)]
pub struct ResourceTable<V> {
    v4: BTreeMap<u8, BTreeMap<u32, (IpNetwork, V)>>,
    v6: BTreeMap<u8, BTreeMap<u128, (IpNetwork, V)>>,
}

impl<V> Default for ResourceTable<V> {
    fn default() -> Self {
        Self {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }
}

fn mask_v4(addr: u32, prefix: u8) -> u32 {
    addr & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(addr: u128, prefix: u8) -> u128 {
    addr & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl<V> ResourceTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value of `network`, returning the one it replaces.
    pub fn insert(&mut self, network: IpNetwork, value: V) -> Option<V> {
        let prefix = network.prefix();
        let old = match network.addr() {
            IpAddr::V4(a) => self
                .v4
                .entry(prefix)
                .or_default()
                .insert(mask_v4(u32::from(a), prefix), (network, value)),
            IpAddr::V6(a) => self
                .v6
                .entry(prefix)
                .or_default()
                .insert(mask_v6(u128::from(a), prefix), (network, value)),
        };
        old.map(|(_, v)| v)
    }

    /// Removes `network` (exactly that network, not what it contains).
    pub fn remove(&mut self, network: &IpNetwork) -> Option<V> {
        let prefix = network.prefix();
        let removed = match network.addr() {
            IpAddr::V4(a) => {
                let by_addr = self.v4.get_mut(&prefix)?;
                let removed = by_addr.remove(&mask_v4(u32::from(a), prefix));
                if by_addr.is_empty() {
                    self.v4.remove(&prefix);
                }
                removed
            }
            IpAddr::V6(a) => {
                let by_addr = self.v6.get_mut(&prefix)?;
                let removed = by_addr.remove(&mask_v6(u128::from(a), prefix));
                if by_addr.is_empty() {
                    self.v6.remove(&prefix);
                }
                removed
            }
        };
        removed.map(|(_, v)| v)
    }

    /// The value of exactly `network`.
    pub fn get(&self, network: &IpNetwork) -> Option<&V> {
        let prefix = network.prefix();
        let entry = match network.addr() {
            IpAddr::V4(a) => self.v4.get(&prefix)?.get(&mask_v4(u32::from(a), prefix)),
            IpAddr::V6(a) => self.v6.get(&prefix)?.get(&mask_v6(u128::from(a), prefix)),
        };
        entry.map(|(_, v)| v)
    }

    /// The most specific network containing `ip`, and its value.
    pub fn longest_match(&self, ip: IpAddr) -> Option<(IpNetwork, &V)> {
        let found = match ip {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                self.v4
                    .iter()
                    .rev()
                    .find_map(|(prefix, by_addr)| by_addr.get(&mask_v4(bits, *prefix)))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                self.v6
                    .iter()
                    .rev()
                    .find_map(|(prefix, by_addr)| by_addr.get(&mask_v6(bits, *prefix)))
            }
        };
        found.map(|(network, v)| (*network, v))
    }

    /// Every network and its value: IPv4 before IPv6, shorter prefixes first, then by address.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, &V)> + '_ {
        let v4 = self.v4.values().flat_map(BTreeMap::values);
        let v6 = self.v6.values().flat_map(BTreeMap::values);
        v4.chain(v6).map(|(network, v)| (*network, v))
    }

    /// How many networks the table holds.
    pub fn len(&self) -> usize {
        self.v4.values().map(BTreeMap::len).sum::<usize>()
            + self.v6.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}
