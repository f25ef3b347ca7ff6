//! Prometheus metrics (default registry, so pingora's `/metrics` shows them).
//!
//! - `edgepop_cert_reloads_total{result="ok"|"error"}`
//! - `edgepop_cert_not_after_timestamp_seconds{name}`: per live domain directory
//! - `edgepop_cert_last_reload_success_timestamp_seconds`
//! - `edgepop_cert_live_domains`
//! - `edgepop_tls_handshake_failures_total{reason}`: fed by the proxy through
//!   [`record_handshake_failure`] / [`record_tls_error`]

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use once_cell::sync::Lazy;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rustls::{AlertDescription, PeerIncompatible};
use tracing::warn;

fn register<C: prometheus::core::Collector + Clone + 'static>(metric: C, name: &str) -> C {
    // A failed registration (a duplicate name) must not take the process down: the metric keeps
    // working, it is just not exported.
    if let Err(e) = prometheus::register(Box::new(metric.clone())) {
        warn!(metric = name, error = %e, "metric not registered");
    }
    metric
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    #[allow(clippy::expect_used)] // static name and labels: only a typo here can fail
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(metric, name)
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    #[allow(clippy::expect_used)] // static name and labels: only a typo here can fail
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    register(metric, name)
}

fn gauge(name: &str, help: &str) -> IntGauge {
    #[allow(clippy::expect_used)] // static name: only a typo here can fail
    let metric = IntGauge::new(name, help).expect("valid metric");
    register(metric, name)
}

static RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    let m = counter_vec(
        "edgepop_cert_reloads_total",
        "Certificate directory reloads, by result (error: some domain failed validation)",
        &["result"],
    );
    for result in ["ok", "error"] {
        m.with_label_values(&[result]);
    }
    m
});

static NOT_AFTER: Lazy<IntGaugeVec> = Lazy::new(|| {
    gauge_vec(
        "edgepop_cert_not_after_timestamp_seconds",
        "notAfter of the certificate served for each domain directory, unix seconds",
        &["name"],
    )
});

static LAST_SUCCESS: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "edgepop_cert_last_reload_success_timestamp_seconds",
        "Time of the last reload in which every domain validated, unix seconds",
    )
});

static LIVE_DOMAINS: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "edgepop_cert_live_domains",
        "Domain directories currently served",
    )
});

static HANDSHAKE_FAILURES: Lazy<IntCounterVec> = Lazy::new(|| {
    let m = counter_vec(
        "edgepop_tls_handshake_failures_total",
        "Failed downstream TLS handshakes, by reason",
        &["reason"],
    );
    for reason in HandshakeFailure::ALL {
        m.with_label_values(&[reason.as_str()]);
    }
    m
});

fn unix_now() -> i64 {
    unix(SystemTime::now())
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn record_reload(ok: bool) {
    RELOADS
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
    if ok {
        LAST_SUCCESS.set(unix_now());
    }
}

pub(crate) fn record_snapshot<'a>(live: impl Iterator<Item = (&'a str, SystemTime)>, count: usize) {
    for (name, not_after) in live {
        NOT_AFTER.with_label_values(&[name]).set(unix(not_after));
    }
    LIVE_DOMAINS.set(i64::try_from(count).unwrap_or(i64::MAX));
}

pub(crate) fn remove_not_after(name: &str) {
    // Err only means the series did not exist.
    let _ = NOT_AFTER.remove_label_values(&[name]);
}

/// Why a downstream TLS handshake failed: the `reason` label of
/// `edgepop_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// No certificate for the SNI (or no SNI) and no default domain.
    NoCertificate,
    /// The client offers no TLS version we accept (below 1.2, or broken version negotiation).
    ProtocolVersion,
    /// No cipher suite, key-exchange group or signature scheme in common.
    NoSharedCipher,
    /// The client sent something that is not a well-formed ClientHello (plain HTTP, scanners).
    BadClientHello,
    /// The client sent a fatal alert, e.g. it does not trust our certificate.
    PeerAlert,
    /// The connection closed mid-handshake.
    Eof,
    /// Another socket error (reset, broken pipe, ...).
    Io,
    /// The handshake timed out.
    Timeout,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [Self; 9] = [
        Self::NoCertificate,
        Self::ProtocolVersion,
        Self::NoSharedCipher,
        Self::BadClientHello,
        Self::PeerAlert,
        Self::Eof,
        Self::Io,
        Self::Timeout,
        Self::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::ProtocolVersion => "protocol_version",
            Self::NoSharedCipher => "no_shared_cipher",
            Self::BadClientHello => "bad_client_hello",
            Self::PeerAlert => "peer_alert",
            Self::Eof => "eof",
            Self::Io => "io",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// Classify a rustls error from a server-side handshake.
    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            // What rustls reports when the resolver returns `None` (hs.rs: "no server
            // certificate chain resolved"); `General` carries nothing else during a handshake.
            E::General(msg) if msg.contains("certificate") => Self::NoCertificate,
            E::PeerIncompatible(p) => match p {
                PeerIncompatible::NoCipherSuitesInCommon
                | PeerIncompatible::NoKxGroupsInCommon
                | PeerIncompatible::NoSignatureSchemesInCommon
                | PeerIncompatible::NoEcPointFormatsInCommon
                | PeerIncompatible::UncompressedEcPointsRequired => Self::NoSharedCipher,
                PeerIncompatible::SupportedVersionsExtensionRequired
                // What a TLS 1.0/1.1 ClientHello (no signature_algorithms) trips over first.
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => Self::ProtocolVersion,
                _ => Self::BadClientHello,
            },
            E::AlertReceived(AlertDescription::ProtocolVersion) => Self::ProtocolVersion,
            E::AlertReceived(AlertDescription::HandshakeFailure) => Self::NoSharedCipher,
            E::AlertReceived(_) => Self::PeerAlert,
            E::InvalidMessage(_)
            | E::PeerMisbehaved(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerSentOversizedRecord
            | E::DecryptError => Self::BadClientHello,
            _ => Self::Other,
        }
    }

    /// Classify an I/O error from a handshake (tokio-rustls / pingora wrap rustls errors in
    /// `io::Error`; those are unwrapped first). An `ErrorKind::Other` error that carries only
    /// text is classified by [`HandshakeFailure::from_message`].
    pub fn from_io(err: &io::Error) -> Self {
        if let Some(inner) = err.get_ref() {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Self::from_rustls(tls);
            }
            if err.kind() == io::ErrorKind::Other {
                return Self::from_message(&inner.to_string());
            }
        }
        match err.kind() {
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::UnexpectedEof => Self::Eof,
            io::ErrorKind::InvalidData => Self::BadClientHello,
            _ => Self::Io,
        }
    }

    /// Classify a handshake error known only by its text. pingora 0.9.1's rustls acceptor
    /// (`explain_err`) keeps just the `Display` of the rustls or I/O error, e.g. `... tls connect
    /// error: unexpected error: no server certificate chain resolved`; this reads the rustls and
    /// tokio-rustls wording back into a reason (unknown text is [`HandshakeFailure::Other`]).
    pub fn from_message(msg: &str) -> Self {
        const NO_SHARED: [&str; 5] = [
            "NoCipherSuitesInCommon",
            "NoKxGroupsInCommon",
            "NoSignatureSchemesInCommon",
            "NoEcPointFormatsInCommon",
            "UncompressedEcPointsRequired",
        ];
        const VERSION: [&str; 5] = [
            "SupportedVersionsExtensionRequired",
            "SignatureAlgorithmsExtensionRequired",
            "Tls12NotOffered",
            "Tls12NotOfferedOrEnabled",
            "ServerTlsVersionIsDisabledByOurConfig",
        ];
        const MALFORMED: [&str; 6] = [
            "received corrupt message",
            "peer misbehaved",
            "received unexpected message",
            "received unexpected handshake message",
            "peer sent excess record size",
            "cannot decrypt peer's message",
        ];
        let first_word = |s: &str| {
            s.split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .map(str::to_owned)
        };
        if msg.contains("no server certificate chain resolved") {
            return Self::NoCertificate;
        }
        if let Some((_, why)) = msg.split_once("peer is incompatible: ") {
            return match first_word(why) {
                Some(w) if NO_SHARED.contains(&w.as_str()) => Self::NoSharedCipher,
                Some(w) if VERSION.contains(&w.as_str()) => Self::ProtocolVersion,
                _ => Self::BadClientHello,
            };
        }
        if let Some((_, alert)) = msg.split_once("received fatal alert: ") {
            return match first_word(alert).as_deref() {
                Some("ProtocolVersion") => Self::ProtocolVersion,
                Some("HandshakeFailure") => Self::NoSharedCipher,
                _ => Self::PeerAlert,
            };
        }
        if MALFORMED.iter().any(|m| msg.contains(m)) {
            return Self::BadClientHello;
        }
        let lower = msg.to_ascii_lowercase();
        if lower.contains("eof") || lower.contains("end of file") {
            Self::Eof
        } else if lower.contains("timed out") {
            Self::Timeout
        } else if lower.contains("os error")
            || lower.contains("connection reset")
            || lower.contains("broken pipe")
        {
            Self::Io
        } else {
            Self::Other
        }
    }
}

/// Count a failed downstream handshake (`edgepop_tls_handshake_failures_total{reason}`);
/// returns the reason for the caller's log line.
pub fn record_handshake_failure(err: &io::Error) -> HandshakeFailure {
    let reason = HandshakeFailure::from_io(err);
    HANDSHAKE_FAILURES
        .with_label_values(&[reason.as_str()])
        .inc();
    reason
}

/// [`record_handshake_failure`] for a bare `rustls::Error`.
pub fn record_tls_error(err: &rustls::Error) -> HandshakeFailure {
    let reason = HandshakeFailure::from_rustls(err);
    HANDSHAKE_FAILURES
        .with_label_values(&[reason.as_str()])
        .inc();
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_definitions_are_valid_and_registered() {
        record_reload(true);
        record_snapshot([("metrics-unit.test", UNIX_EPOCH)].into_iter(), 1);
        record_tls_error(&rustls::Error::General("x".into()));
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for want in [
            "edgepop_cert_reloads_total",
            "edgepop_cert_not_after_timestamp_seconds",
            "edgepop_cert_last_reload_success_timestamp_seconds",
            "edgepop_cert_live_domains",
            "edgepop_tls_handshake_failures_total",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        remove_not_after("metrics-unit.test");
    }

    #[test]
    fn handshake_failure_classification() {
        use rustls::Error as E;
        let cases: Vec<(io::Error, HandshakeFailure)> = vec![
            (
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    E::General("no server certificate chain resolved".into()),
                ),
                HandshakeFailure::NoCertificate,
            ),
            (
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    E::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                ),
                HandshakeFailure::NoSharedCipher,
            ),
            (
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    E::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired),
                ),
                HandshakeFailure::ProtocolVersion,
            ),
            (
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                ),
                HandshakeFailure::BadClientHello,
            ),
            (
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    E::AlertReceived(AlertDescription::UnknownCA),
                ),
                HandshakeFailure::PeerAlert,
            ),
            (io::ErrorKind::UnexpectedEof.into(), HandshakeFailure::Eof),
            (io::ErrorKind::TimedOut.into(), HandshakeFailure::Timeout),
            (io::ErrorKind::ConnectionReset.into(), HandshakeFailure::Io),
        ];
        for (err, want) in cases {
            assert_eq!(HandshakeFailure::from_io(&err), want, "{err}");
        }
        // What pingora 0.9.1 hands the listener: only the error's text, inside its own context.
        let pingora = |text: String| {
            io::Error::other(format!(
                " TLSHandshakeFailure context: TLS accept() failed:  TLSHandshakeFailure context: \
                 tls connect error: {text}"
            ))
        };
        let texts: Vec<(io::Error, HandshakeFailure)> = vec![
            (
                pingora(E::General("no server certificate chain resolved".into()).to_string()),
                HandshakeFailure::NoCertificate,
            ),
            (
                pingora(E::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon).to_string()),
                HandshakeFailure::NoSharedCipher,
            ),
            (
                pingora(
                    E::PeerIncompatible(PeerIncompatible::SignatureAlgorithmsExtensionRequired)
                        .to_string(),
                ),
                HandshakeFailure::ProtocolVersion,
            ),
            (
                pingora(E::PeerIncompatible(PeerIncompatible::NullCompressionRequired).to_string()),
                HandshakeFailure::BadClientHello,
            ),
            (
                pingora(E::AlertReceived(AlertDescription::ProtocolVersion).to_string()),
                HandshakeFailure::ProtocolVersion,
            ),
            (
                pingora(E::AlertReceived(AlertDescription::HandshakeFailure).to_string()),
                HandshakeFailure::NoSharedCipher,
            ),
            (
                pingora(E::AlertReceived(AlertDescription::UnknownCA).to_string()),
                HandshakeFailure::PeerAlert,
            ),
            (
                pingora(E::InvalidMessage(rustls::InvalidMessage::InvalidContentType).to_string()),
                HandshakeFailure::BadClientHello,
            ),
            (pingora("tls handshake eof".into()), HandshakeFailure::Eof),
            (
                pingora(io::Error::from(io::ErrorKind::ConnectionReset).to_string()),
                HandshakeFailure::Io,
            ),
            (
                pingora("Connection reset by peer (os error 104)".into()),
                HandshakeFailure::Io,
            ),
            (pingora("something new".into()), HandshakeFailure::Other),
        ];
        for (err, want) in texts {
            assert_eq!(HandshakeFailure::from_io(&err), want, "{err}");
        }
        // A typed error keeps its kind's meaning even with a text payload.
        assert_eq!(
            HandshakeFailure::from_io(&io::Error::new(io::ErrorKind::TimedOut, "slow")),
            HandshakeFailure::Timeout
        );

        let before = HANDSHAKE_FAILURES.with_label_values(&["timeout"]).get();
        assert_eq!(
            record_handshake_failure(&io::ErrorKind::TimedOut.into()),
            HandshakeFailure::Timeout
        );
        assert!(HANDSHAKE_FAILURES.with_label_values(&["timeout"]).get() > before);
    }
}
