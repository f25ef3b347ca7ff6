//! Prometheus metrics of the proxy crate, in the default registry that `/metrics` serves.
//!
//! Names follow `edgepop_<area>_<what>_<unit>`; labels are small enums (status class, method class, a reason),
//! plus the site's configured name, which the operator bounds. Never a raw request host or path.

use once_cell::sync::Lazy;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        tracing::warn!(error = %e, "metric registration failed; it will not be exported");
    }
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("static metric definition {name} is invalid: {e}"));
    register(c)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("static metric definition {name} is invalid: {e}"));
    register(g)
}

/// Latency buckets from 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `edgepop_http_requests_total{site,method,code_class}`
pub(crate) static HTTP_REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "edgepop_http_requests_total",
        "HTTP requests answered, by site, method class and status class.",
        &["site", "method", "code_class"],
    )
});

/// `edgepop_http_request_duration_seconds{site,method,code_class}`
pub(crate) static HTTP_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "edgepop_http_request_duration_seconds",
            "Time from request header to the end of the response, by site, method class and status class.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["site", "method", "code_class"],
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(h)
});

/// `edgepop_upstream_response_duration_seconds`
pub(crate) static UPSTREAM_DURATION: Lazy<Histogram> = Lazy::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "edgepop_upstream_response_duration_seconds",
            "Time from connecting to the upstream to its response header.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(h)
});

/// `edgepop_cache_lookups_total{result}`
pub(crate) static CACHE_LOOKUPS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "edgepop_cache_lookups_total",
        "Cache-enabled requests by outcome (HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS).",
        &["result"],
    )
});

/// `edgepop_cache_lock_wait_seconds`: requests that waited on another request filling the same key.
pub(crate) static CACHE_LOCK_WAIT: Lazy<Histogram> = Lazy::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "edgepop_cache_lock_wait_seconds",
            "Coalesced cache misses: time a request waited for another request filling the same key \
             (the count is the number of coalesced waits).",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(h)
});

/// `edgepop_upstream_errors_total{reason}`
pub(crate) static UPSTREAM_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "edgepop_upstream_errors_total",
        "Failed upstream attempts, by reason (dns, refused, unreachable, timeout, interface, bind, tls, reset, other).",
        &["reason"],
    )
});

/// `edgepop_http_requests_refused_total{reason}`
static REQUESTS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "edgepop_http_requests_refused_total",
        "Requests answered locally and never forwarded, by reason (absolute_form, missing_host, unknown_host, \
         sni_host_mismatch, header_count, header_size, body_size).",
        &["reason"],
    )
});

/// Why a request was answered locally instead of being forwarded (the `reason` of
/// `edgepop_http_requests_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An HTTP/1 absolute-form, authority-form or asterisk-form target (400).
    AbsoluteForm,
    /// No or an empty Host / `:authority` (400).
    MissingHost,
    /// A host no site serves (`http.unknown-host-status`).
    UnknownHost,
    /// A TLS request whose Host names another site than the SNI (421, `http.sni-host-mismatch`).
    SniHostMismatch,
    /// More header fields than `http.max-header-count` (431).
    HeaderCount,
    /// A header block over `http.max-header-size` (431).
    HeaderSize,
    /// A declared body over `http.max-body-size` (413).
    BodySize,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::AbsoluteForm,
        Refusal::MissingHost,
        Refusal::UnknownHost,
        Refusal::SniHostMismatch,
        Refusal::HeaderCount,
        Refusal::HeaderSize,
        Refusal::BodySize,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::AbsoluteForm => "absolute_form",
            Refusal::MissingHost => "missing_host",
            Refusal::UnknownHost => "unknown_host",
            Refusal::SniHostMismatch => "sni_host_mismatch",
            Refusal::HeaderCount => "header_count",
            Refusal::HeaderSize => "header_size",
            Refusal::BodySize => "body_size",
        }
    }

    /// Counts one refused request (counters resolved once).
    pub(crate) fn count(self) {
        static COUNTERS: Lazy<Vec<IntCounter>> = Lazy::new(|| {
            Refusal::ALL
                .iter()
                .map(|r| REQUESTS_REFUSED.with_label_values(&[r.as_str()]))
                .collect()
        });
        if let Some(c) = COUNTERS.get(self as usize) {
            c.inc();
        }
    }
}

/// `edgepop_connections_open{listener}`
pub(crate) static CONNECTIONS_OPEN: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge_vec(
        "edgepop_connections_open",
        "Client connections currently open, by listener address.",
        &["listener"],
    )
});

/// `edgepop_connections_total{listener,result}`
pub(crate) static CONNECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "edgepop_connections_total",
        "Client connections accepted, by listener and outcome (accepted, over_limit).",
        &["listener", "result"],
    )
});

/// `edgepop_proxy_protocol_errors_total{reason}`
pub(crate) static PROXY_PROTOCOL_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "edgepop_proxy_protocol_errors_total",
        "Connections closed while reading the PROXY protocol header, by reason.",
        &["reason"],
    )
});

/// `edgepop_tls_handshakes_total`
pub(crate) static TLS_HANDSHAKES: Lazy<IntCounter> = Lazy::new(|| {
    let c = IntCounter::new("edgepop_tls_handshakes_total", "Completed TLS handshakes.")
        .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(c)
});

/// `edgepop_config_reloads_total{result}`
pub(crate) static CONFIG_RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "edgepop_config_reloads_total",
        "Configuration reloads (SIGHUP), by result (ok, error).",
        &["result"],
    )
});

/// `edgepop_config_last_reload_success_timestamp_seconds`
static CONFIG_LAST_SUCCESS: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "edgepop_config_last_reload_success_timestamp_seconds",
        "Unix time the configuration was last loaded successfully (start-up or SIGHUP).",
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(g)
});

/// `edgepop_config_last_reload_successful`
static CONFIG_LAST_OK: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "edgepop_config_last_reload_successful",
        "1 if the last configuration load succeeded, 0 if the file on disk was rejected (the running configuration is older).",
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(g)
});

/// Records the outcome of a configuration reload.
pub(crate) fn config_reloaded(ok: bool) {
    CONFIG_RELOADS
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
    CONFIG_LAST_OK.set(i64::from(ok));
    if ok {
        CONFIG_LAST_SUCCESS.set(unix_now());
    }
}

fn unix_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(now).unwrap_or(i64::MAX)
}

/// `edgepop_build_info{version}`
pub(crate) static BUILD_INFO: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge_vec(
        "edgepop_build_info",
        "Always 1; labelled with the version.",
        &["version"],
    )
});

/// `edgepop_process_start_time_seconds`
pub(crate) static START_TIME: Lazy<IntGauge> = Lazy::new(|| {
    let g = IntGauge::new(
        "edgepop_process_start_time_seconds",
        "Unix time the process started.",
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    register(g)
});

/// Request method label: the common methods by name, everything else as "other".
pub(crate) fn method_class(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Sets the static gauges once at start-up (the configuration was just loaded) and registers the process
/// collector.
pub(crate) fn init() {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    START_TIME.set(unix_now());
    for result in ["ok", "error"] {
        CONFIG_RELOADS.with_label_values(&[result]);
    }
    CONFIG_LAST_OK.set(1);
    Lazy::force(&CACHE_LOCK_WAIT);
    CONFIG_LAST_SUCCESS.set(unix_now());
    register_process_collector();
}

/// `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_virtual_memory_bytes`,
/// `process_cpu_seconds_total`, `process_start_time_seconds`, `process_threads`, read from `/proc/self` at each
/// scrape. Registered once; pingora 0.9.1 registers no process collector of its own.
fn register_process_collector() {
    #[cfg(target_os = "linux")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            match prometheus::register(Box::new(pc)) {
                Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
                Err(e) => tracing::warn!(error = %e, "process metrics not registered"),
            }
        });
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn method_index(method: &http::Method) -> usize {
    let m = method_class(method);
    METHODS
        .iter()
        .position(|x| *x == m)
        .unwrap_or(METHODS.len() - 1)
}

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => CLASSES.len() - 1,
    }
}

/// One site's request metrics, resolved once: the request path does an array index instead of hashing label
/// values under a lock. Series appear on first use.
#[derive(Debug)]
pub(crate) struct SiteMetrics {
    site: std::sync::Arc<str>,
    requests: [std::sync::OnceLock<(IntCounter, Histogram)>; METHODS.len() * CLASSES.len()],
}

impl SiteMetrics {
    pub(crate) fn new(site: std::sync::Arc<str>) -> SiteMetrics {
        SiteMetrics {
            site,
            requests: std::array::from_fn(|_| std::sync::OnceLock::new()),
        }
    }

    /// Counts one finished request.
    pub(crate) fn observe(&self, method: &http::Method, status: u16, elapsed: std::time::Duration) {
        let (m, c) = (method_index(method), class_index(status));
        let (count, duration) = self.requests[m * CLASSES.len() + c].get_or_init(|| {
            let labels = [&*self.site, METHODS[m], CLASSES[c]];
            (
                HTTP_REQUESTS.with_label_values(&labels),
                HTTP_DURATION.with_label_values(&labels),
            )
        });
        count.inc();
        duration.observe(elapsed.as_secs_f64());
    }
}

/// Requests that matched no site.
pub(crate) static NO_SITE: Lazy<SiteMetrics> =
    Lazy::new(|| SiteMetrics::new(std::sync::Arc::from("-")));

/// `edgepop_cache_lookups_total` by label, resolved once.
pub(crate) fn cache_lookup(label: &'static str) -> &'static IntCounter {
    const LABELS: [&str; 7] = [
        "HIT",
        "MISS",
        "EXPIRED",
        "STALE",
        "UPDATING",
        "REVALIDATED",
        "BYPASS",
    ];
    static COUNTERS: Lazy<Vec<IntCounter>> = Lazy::new(|| {
        LABELS
            .iter()
            .map(|l| CACHE_LOOKUPS.with_label_values(&[l]))
            .collect()
    });
    let i = LABELS
        .iter()
        .position(|l| *l == label)
        .unwrap_or(LABELS.len() - 1);
    &COUNTERS[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_counters_line_up_with_their_reasons() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
            r.count();
            let c = REQUESTS_REFUSED.with_label_values(&[r.as_str()]);
            assert!(c.get() >= 1, "{r:?}");
        }
    }
}
