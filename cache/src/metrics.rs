//! Prometheus metrics (default registry, the one pingora's `/metrics` service exports).
//!
//! Children of the labelled families are resolved once, so the hot path only bumps an atomic.

use once_cell::sync::Lazy;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

pub(crate) struct Metrics {
    pub(crate) memory_bytes: IntGauge,
    pub(crate) memory_objects: IntGauge,
    pub(crate) disk_bytes: IntGauge,
    pub(crate) disk_objects: IntGauge,
    pub(crate) memory_evictions: IntCounter,
    pub(crate) disk_evictions: IntCounter,
    pub(crate) disk_read_errors: IntCounter,
    pub(crate) disk_write_errors: IntCounter,
    pub(crate) disk_corrupt: IntCounter,
    pub(crate) memory_hits: IntCounter,
    pub(crate) memory_misses: IntCounter,
    pub(crate) disk_hits: IntCounter,
    pub(crate) disk_misses: IntCounter,
}

pub(crate) static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let tier_bytes = gauge_vec(
        "edgepop_cache_tier_bytes",
        "Bytes held by each cache storage tier.",
        &["tier"],
    );
    let tier_objects = gauge_vec(
        "edgepop_cache_tier_objects",
        "Entries held by each cache storage tier.",
        &["tier"],
    );
    let evictions = counter_vec(
        "edgepop_cache_evictions_total",
        "Entries evicted for space (memory, disk LRU) or inactivity (disk).",
        &["tier"],
    );
    let disk_errors = counter_vec(
        "edgepop_cache_disk_errors_total",
        "Disk tier failures: read and write IO errors, corrupt entries found and removed.",
        &["op"],
    );
    let lookups = counter_vec(
        "edgepop_cache_storage_lookups_total",
        "Storage lookups per tier; the disk tier is asked only on a memory miss.",
        &["tier", "result"],
    );
    Metrics {
        memory_bytes: tier_bytes.with_label_values(&["memory"]),
        memory_objects: tier_objects.with_label_values(&["memory"]),
        disk_bytes: tier_bytes.with_label_values(&["disk"]),
        disk_objects: tier_objects.with_label_values(&["disk"]),
        memory_evictions: evictions.with_label_values(&["memory"]),
        disk_evictions: evictions.with_label_values(&["disk"]),
        disk_read_errors: disk_errors.with_label_values(&["read"]),
        disk_write_errors: disk_errors.with_label_values(&["write"]),
        disk_corrupt: disk_errors.with_label_values(&["corrupt"]),
        memory_hits: lookups.with_label_values(&["memory", "hit"]),
        memory_misses: lookups.with_label_values(&["memory", "miss"]),
        disk_hits: lookups.with_label_values(&["disk", "hit"]),
        disk_misses: lookups.with_label_values(&["disk", "miss"]),
    }
});

/// Saturating conversion for gauges.
pub(crate) fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

// The option values are constants checked by the `metrics_register` test, so building the family
// cannot fail at run time; registering can (a duplicate name), and then the family still works,
// unexported, instead of panicking.
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric options");
    register(Box::new(vec.clone()), name);
    vec
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options");
    register(Box::new(vec.clone()), name);
    vec
}

fn register(collector: Box<dyn prometheus::core::Collector>, name: &str) {
    if let Err(e) = prometheus::register(collector) {
        tracing::warn!(metric = name, error = %e, "cache metric not registered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register() {
        METRICS.disk_corrupt.inc();
        let families = prometheus::gather();
        for name in [
            "edgepop_cache_tier_bytes",
            "edgepop_cache_tier_objects",
            "edgepop_cache_evictions_total",
            "edgepop_cache_disk_errors_total",
            "edgepop_cache_storage_lookups_total",
        ] {
            assert!(
                families.iter().any(|f| f.name() == name),
                "{name} not in the default registry"
            );
        }
    }
}
