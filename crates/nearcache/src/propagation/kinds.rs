//! Invalidations counted by kind (keys, region expiries, sub-key expiries, clears), so an
//! operator can tell a storm of clears from ordinary key traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use nearcache_backplane::wire::{Message, Op};

use crate::stats::InvalidationKinds;

/// One counter per kind; nothing here is on the hit path.
#[derive(Debug, Default)]
pub(crate) struct KindCounters([AtomicU64; 4]);

impl KindCounters {
    /// Counts the invalidations `message` carries, as [`invalidations`](super::sender::invalidations)
    /// does in total (an operation this version does not know counts as a clear: that is
    /// how a receiver applies it).
    pub(crate) fn count(&self, message: &Message) {
        for op in &message.ops {
            let (kind, n) = match op {
                Op::Remove { keys } => (0, keys.len() as u64),
                Op::ExpireRegion { .. } => (1, 1),
                Op::ExpireRegionKey { .. } => (2, 1),
                op if op.is_control() => continue,
                _ => (3, 1),
            };
            self.0[kind].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> InvalidationKinds {
        let read = |i: usize| self.0[i].load(Ordering::Relaxed);
        InvalidationKinds {
            keys: read(0),
            region_expiries: read(1),
            region_key_expiries: read(2),
            clears: read(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nearcache_backplane::wire::{InstanceId, MessageBuilder, WireLimits};

    #[test]
    fn each_kind_is_counted_like_the_total() {
        let mut builder = MessageBuilder::new(WireLimits::DEFAULT);
        builder.push_remove("a".to_owned()).ok();
        builder.push_remove("b".to_owned()).ok();
        builder.push(Op::ExpireRegion { region: "r".into() }).ok();
        builder
            .push(Op::ExpireRegionKey {
                region: "r".into(),
                key: "k".into(),
            })
            .ok();
        builder.push(Op::Clear).ok();
        let message = builder.build(InstanceId::random(), 1, 0, 0);
        let counters = KindCounters::default();
        counters.count(&message);
        let kinds = counters.snapshot();
        assert_eq!(
            kinds,
            InvalidationKinds {
                keys: 2,
                region_expiries: 1,
                region_key_expiries: 1,
                clears: 1,
            }
        );
        assert_eq!(kinds.total(), super::super::sender::invalidations(&message));
    }
}
