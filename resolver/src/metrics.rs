//! Prometheus metrics (default registry, shared with pingora's `/metrics`).
//!
//! - `edgepop_dns_lookups_total{result}`: one per `resolve`/`resolve_ips` call on a name (IP
//!   literals are not counted). `answered`: a network lookup gave addresses; `cached`: a fresh
//!   answer from the table; `stale`: an answer past its TTL (serve-stale, or a refresh still in
//!   flight); `negative`: NXDOMAIN/NODATA, fresh or cached; `failed`: an error.
//! - `edgepop_dns_queries_total{result}`: network lookups, cold and background
//!   (`answered|negative|failed`); a refresh that fails while a stale answer is served counts here.
//! - `edgepop_dns_lookup_duration_seconds`: network lookups only (cold and background).
//! - `edgepop_dns_stale_names`: names whose refresh is failing and that are served stale.

use once_cell::sync::Lazy;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

pub(crate) struct Metrics {
    pub(crate) answered: IntCounter,
    pub(crate) cached: IntCounter,
    pub(crate) stale: IntCounter,
    pub(crate) negative: IntCounter,
    pub(crate) failed: IntCounter,
    pub(crate) query_answered: IntCounter,
    pub(crate) query_negative: IntCounter,
    pub(crate) query_failed: IntCounter,
    pub(crate) duration: Histogram,
    pub(crate) stale_names: IntGauge,
}

/// Label values are resolved once, so the warm path only does an atomic add.
pub(crate) static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let lookups = counter_vec(
        "edgepop_dns_lookups_total",
        "Name resolutions requested by the proxy, by result (answered, cached, stale, negative, failed).",
    );
    let queries = counter_vec(
        "edgepop_dns_queries_total",
        "Network DNS lookups (cold and background refresh), by result (answered, negative, failed).",
    );
    Metrics {
        answered: lookups.with_label_values(&["answered"]),
        cached: lookups.with_label_values(&["cached"]),
        stale: lookups.with_label_values(&["stale"]),
        negative: lookups.with_label_values(&["negative"]),
        failed: lookups.with_label_values(&["failed"]),
        query_answered: queries.with_label_values(&["answered"]),
        query_negative: queries.with_label_values(&["negative"]),
        query_failed: queries.with_label_values(&["failed"]),
        duration: histogram(),
        stale_names: gauge(),
    }
});

// The definitions below are constants known to be valid, so `new` cannot fail; registration
// can (e.g. a name already taken), in which case the metric still works, unexported.

#[allow(clippy::expect_used)] // constant, valid metric definition
fn counter_vec(name: &str, help: &str) -> IntCounterVec {
    let vec =
        IntCounterVec::new(Opts::new(name, help), &["result"]).expect("valid counter definition");
    register(Box::new(vec.clone()), name);
    vec
}

#[allow(clippy::expect_used)] // constant, valid metric definition
fn histogram() -> Histogram {
    let name = "edgepop_dns_lookup_duration_seconds";
    let opts = HistogramOpts::new(
        name,
        "Duration of network DNS lookups (cold lookups and background refreshes).",
    )
    .buckets(vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]);
    let histogram = Histogram::with_opts(opts).expect("valid histogram definition");
    register(Box::new(histogram.clone()), name);
    histogram
}

#[allow(clippy::expect_used)] // constant, valid metric definition
fn gauge() -> IntGauge {
    let name = "edgepop_dns_stale_names";
    let gauge = IntGauge::new(
        name,
        "Names currently served from a stale answer because every refresh fails.",
    )
    .expect("valid gauge definition");
    register(Box::new(gauge.clone()), name);
    gauge
}

fn register(collector: Box<dyn prometheus::core::Collector>, name: &str) {
    if let Err(error) = prometheus::register(collector) {
        tracing::warn!(metric = name, %error, "metric not registered; it will not be exported");
    }
}
