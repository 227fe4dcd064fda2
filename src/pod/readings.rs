//! What stats remember between calls: the previous cumulative CPU reading of each container
//! and pod (`usage_nano_cores` is a rate).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::cri;

/// One cumulative CPU reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPoint {
    pub at_ns: i64,
    pub usage_ns: u64,
}

/// The CPU rate between two readings, in nanoseconds of CPU per second (1e9 = one core).
/// None without an earlier reading, or when time or the counter went backwards (a new cgroup
/// under the same id).
pub fn nano_cores(prev: Option<CpuPoint>, now: CpuPoint) -> Option<u64> {
    let prev = prev?;
    let dt = now.at_ns.checked_sub(prev.at_ns).filter(|d| *d > 0)?;
    let du = now.usage_ns.checked_sub(prev.usage_ns)?;
    u64::try_from(u128::from(du) * 1_000_000_000 / dt as u128).ok()
}

/// The shortest interval a CPU rate is measured over.
const MIN_RATE_INTERVAL_NS: i64 = 1_000_000_000;

/// State kept between stats calls.
#[derive(Default)]
pub struct StatsCache {
    cpu: Mutex<HashMap<String, CpuPoint>>,
}

impl StatsCache {
    /// The CPU stats for a new reading, remembering it for the next rate.
    pub fn cpu(&self, key: &str, usage_ns: Option<u64>, at_ns: i64) -> Option<cri::CpuUsage> {
        let usage_ns = usage_ns?;
        let now = CpuPoint { at_ns, usage_ns };
        let mut table = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        let prev = table.get(key).copied();
        // Readings close together (kubelet's container and pod stats paths asking in the
        // same second) would give a noisy rate; keep measuring from the older reading.
        if prev.is_none_or(|p| at_ns.saturating_sub(p.at_ns) >= MIN_RATE_INTERVAL_NS) {
            table.insert(key.to_string(), now);
        }
        drop(table);
        Some(cri::CpuUsage {
            timestamp: at_ns,
            usage_core_nano_seconds: Some(u64v(usage_ns)),
            usage_nano_cores: nano_cores(prev, now).map(u64v),
        })
    }

    pub fn forget_except(&self, live: &std::collections::HashSet<String>) {
        self.cpu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| live.contains(k));
    }
}

pub fn u64v(value: u64) -> cri::UInt64Value {
    cri::UInt64Value { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at_ns: i64, usage_ns: u64) -> CpuPoint {
        CpuPoint { at_ns, usage_ns }
    }

    #[test]
    fn nano_cores_is_the_rate_between_readings() {
        assert_eq!(nano_cores(None, p(10, 10)), None);
        // Half a core: 0.5s of CPU over 1s.
        assert_eq!(
            nano_cores(Some(p(1_000_000_000, 0)), p(2_000_000_000, 500_000_000)),
            Some(500_000_000)
        );
        // Two busy cores over 100ms.
        assert_eq!(
            nano_cores(Some(p(0, 1_000)), p(100_000_000, 200_001_000)),
            Some(2_000_000_000)
        );
        // No time passed, time or counter went backwards.
        assert_eq!(nano_cores(Some(p(5, 0)), p(5, 10)), None);
        assert_eq!(nano_cores(Some(p(6, 0)), p(5, 10)), None);
        assert_eq!(nano_cores(Some(p(0, 10)), p(5, 9)), None);
        // Huge counters do not overflow.
        assert_eq!(
            nano_cores(Some(p(0, 0)), p(1_000_000_000, u64::MAX / 2)),
            Some(u64::MAX / 2)
        );
    }

    #[test]
    fn cache_computes_rates_and_forgets_the_gone() {
        let cache = StatsCache::default();
        let first = cache.cpu("a", Some(1_000), 1_000_000_000).unwrap();
        assert_eq!(first.usage_core_nano_seconds, Some(u64v(1_000)));
        assert_eq!(first.usage_nano_cores, None);
        let second = cache.cpu("a", Some(500_001_000), 2_000_000_000).unwrap();
        assert_eq!(second.usage_nano_cores, Some(u64v(500_000_000)));
        // Readings within a second of the base are measured from it and do not replace it.
        let soon = cache.cpu("a", Some(550_001_000), 2_100_000_000).unwrap();
        assert_eq!(soon.usage_nano_cores, Some(u64v(500_000_000)));
        let later = cache.cpu("a", Some(1_500_001_000), 3_000_000_000).unwrap();
        assert_eq!(later.usage_nano_cores, Some(u64v(1_000_000_000)));
        assert!(cache.cpu("b", None, 1).is_none());
        cache.forget_except(&["b".to_string()].into_iter().collect());
        let again = cache.cpu("a", Some(900_000_000), 4_000_000_000).unwrap();
        assert_eq!(again.usage_nano_cores, None, "forgotten, so no rate");
    }
}
