//! The access log, written off the request path.
//!
//! A request only copies a few fields into an [`AccessRecord`] and puts it on a bounded channel; a dedicated thread
//! formats and writes through a buffer, flushing whenever the channel runs empty. When the writer falls behind
//! (a slow disk), records are dropped and counted rather than blocking a request.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use once_cell::sync::Lazy;
use pingora::prelude::Session;
use prometheus::IntCounter;

use crate::config::{AccessLogConfig, AccessLogFormat};

const QUEUE: usize = 16 * 1024;

static DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    let c = IntCounter::new(
        "edgepop_access_log_dropped_total",
        "Access log records dropped because the writer could not keep up.",
    )
    .unwrap_or_else(|e| panic!("static metric definition is invalid: {e}"));
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        tracing::warn!(error = %e, "metric registration failed");
    }
    c
});

/// What one request leaves for the log.
#[derive(Debug)]
pub(crate) struct AccessRecord {
    time: SystemTime,
    client: Option<IpAddr>,
    method: http::Method,
    target: String,
    version: http::Version,
    status: u16,
    body_bytes: usize,
    referer: Option<http::HeaderValue>,
    user_agent: Option<http::HeaderValue>,
    host: Option<Box<str>>,
    upstream: Option<SocketAddr>,
    upstream_time: Option<Duration>,
    total_time: Duration,
}

impl AccessRecord {
    #[allow(clippy::too_many_arguments)] // one call site; a builder would only add noise
    pub(crate) fn from_session(
        session: &Session,
        status: u16,
        client: Option<IpAddr>,
        host: Option<&str>,
        upstream: Option<SocketAddr>,
        upstream_time: Option<Duration>,
        total_time: Duration,
        version: http::Version,
    ) -> AccessRecord {
        let req = session.req_header();
        let target = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.to_string(), |pq| pq.as_str().to_owned());
        AccessRecord {
            time: SystemTime::now(),
            client,
            method: req.method.clone(),
            target,
            version,
            status,
            body_bytes: session.body_bytes_sent(),
            referer: req.headers.get(http::header::REFERER).cloned(),
            user_agent: req.headers.get(http::header::USER_AGENT).cloned(),
            host: host.map(Into::into),
            upstream,
            upstream_time,
            total_time,
        }
    }
}

/// Handle used by requests; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog {
    tx: Option<SyncSender<AccessRecord>>,
}

impl AccessLog {
    /// Starts the writer thread (unless the format is `off`). Opening the file happens here, so errors surface at
    /// start-up.
    pub(crate) fn start(config: &AccessLogConfig) -> std::io::Result<AccessLog> {
        if config.format == AccessLogFormat::Off {
            return Ok(AccessLog { tx: None });
        }
        let out: Box<dyn std::io::Write + Send> = match &config.path {
            None => Box::new(std::io::stdout()),
            Some(path) => Box::new(open_append(path)?),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let format = config.format;
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out, format))?;
        Lazy::force(&DROPPED);
        Ok(AccessLog { tx: Some(tx) })
    }

    /// Whether records are written at all (skip building them otherwise).
    pub(crate) fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record; never blocks.
    pub(crate) fn record(&self, record: AccessRecord) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(record)
        {
            DROPPED.inc();
        }
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("opening access log {}: {e}", path.display()),
            )
        })
}

fn writer(
    rx: Receiver<AccessRecord>,
    out: Box<dyn std::io::Write + Send>,
    format: AccessLogFormat,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(rec) = next {
            line.clear();
            match format {
                AccessLogFormat::Combined => combined(&rec, &mut line),
                AccessLogFormat::Json => json(&rec, &mut line),
                AccessLogFormat::Off => {}
            }
            if out.write_all(line.as_bytes()).is_err() {
                DROPPED.inc();
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn header_str(v: &Option<http::HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// nginx `combined` with the real (PROXY protocol) client address first:
/// `$addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`.
pub(crate) fn combined(r: &AccessRecord, out: &mut String) {
    let client = r.client.map(|c| c.to_string());
    let _ = writeln!(
        out,
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
        client.as_deref().unwrap_or("-"),
        TimeLocal(r.time),
        r.method,
        Escaped(&r.target),
        version_str(r.version),
        r.status,
        r.body_bytes,
        Escaped(header_str(&r.referer)),
        Escaped(header_str(&r.user_agent)),
    );
}

/// One JSON object per line with every field.
pub(crate) fn json(r: &AccessRecord, out: &mut String) {
    let secs = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e6;
    let v = serde_json::json!({
        "time": TimeLocal(r.time).to_string(),
        "client": r.client.map(|c| c.to_string()),
        "method": r.method.as_str(),
        "target": r.target,
        "protocol": version_str(r.version),
        "status": r.status,
        "body_bytes": r.body_bytes,
        "referer": r.referer.as_ref().and_then(|v| v.to_str().ok()),
        "user_agent": r.user_agent.as_ref().and_then(|v| v.to_str().ok()),
        "host": r.host.as_deref(),
        "upstream": r.upstream.map(|u| u.to_string()),
        "upstream_time": r.upstream_time.map(secs),
        "request_time": secs(r.total_time),
    });
    let _ = writeln!(out, "{v}");
}

/// Escapes `"` , `\` and control bytes like nginx does (`\xHH`), so a hostile User-Agent cannot forge lines.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0.bytes() {
            if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                write!(f, "\\x{b:02X}")?;
            } else {
                f.write_char(char::from(b))?;
            }
        }
        Ok(())
    }
}

/// `25/Nov/2026:18:37:13 +0000` (UTC, as nginx's `$time_local` shows in a UTC container).
struct TimeLocal(SystemTime);

impl std::fmt::Display for TimeLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
            MONTHS[(m - 1) as usize % 12],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            time: UNIX_EPOCH + Duration::from_secs(1_795_631_833), // 2026-11-25T18:37:13Z
            client: Some("203.0.113.7".parse().unwrap()),
            method: http::Method::GET,
            target: "/a?b=1".into(),
            version: http::Version::HTTP_2,
            status: 200,
            body_bytes: 1234,
            referer: None,
            user_agent: Some(http::HeaderValue::from_static("curl/8 \"x\"")),
            host: Some("example.com".into()),
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
            upstream_time: Some(Duration::from_millis(3)),
            total_time: Duration::from_millis(4),
        }
    }

    #[test]
    fn combined_matches_nginx() {
        let mut s = String::new();
        combined(&record(), &mut s);
        assert_eq!(
            s,
            "203.0.113.7 - - [25/Nov/2026:18:37:13 +0000] \"GET /a?b=1 HTTP/2.0\" 200 1234 \"-\" \"curl/8 \\x22x\\x22\"\n"
        );
    }

    #[test]
    fn json_has_every_field() {
        let mut s = String::new();
        json(&record(), &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["client"], "203.0.113.7");
        assert_eq!(v["upstream"], "127.0.0.1:8080");
        assert_eq!(v["upstream_time"], 0.003);
        assert_eq!(v["status"], 200);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
    }
}
