//! Datagrams a fault holds back, released in a fixed order.
//!
//! A delayed datagram goes out from a task that sleeps for its delay. Two that fall due in the
//! same step would go in the order tokio wakes their tasks, which depends on how its timer
//! wheel got there: a run that skips ahead over idle stretches and one stepped tick by tick
//! could send them in other orders, and the traces part. So each task, once awake, sends every
//! held datagram that is due, earliest first and then in the order they were held; the tasks
//! that wake after it find theirs gone.

use std::collections::BTreeMap;

/// Items held until a time `K`, taken out due time first, then in the order they were held.
#[derive(Debug)]
pub struct Later<K, T> {
    next_seq: u64,
    queue: BTreeMap<(K, u64), T>,
}

impl<K, T> Default for Later<K, T> {
    fn default() -> Self {
        Self {
            next_seq: 0,
            queue: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy, T> Later<K, T> {
    /// Holds `item` until `due`.
    pub fn hold(&mut self, due: K, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.insert((due, seq), item);
    }

    /// The first held item due by `now`, if any.
    pub fn pop_due(&mut self, now: K) -> Option<T> {
        let (&(due, _), _) = self.queue.first_key_value()?;
        if due > now {
            return None;
        }
        self.queue.pop_first().map(|(_, item)| item)
    }

    /// When the first held item is due.
    pub fn next_due(&self) -> Option<K> {
        self.queue.keys().next().map(|(due, _)| *due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_due_time_first_then_in_holding_order() {
        let mut later = Later::default();
        later.hold(5, "b");
        later.hold(3, "a");
        later.hold(5, "c");
        assert_eq!(later.pop_due(2), None);
        assert_eq!(later.next_due(), Some(3));
        assert_eq!(later.pop_due(5), Some("a"));
        assert_eq!(later.pop_due(5), Some("b"));
        assert_eq!(later.pop_due(5), Some("c"));
        assert_eq!(later.pop_due(9), None);
    }
}
