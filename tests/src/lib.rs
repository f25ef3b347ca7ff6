//! Harness for edgepop's end-to-end tests: the real `edgepop` binary against real servers on loopback.
//!
//! - [`Edgepop`] writes a configuration (with free ports and a temp directory substituted), starts the binary,
//!   waits for `/healthz`, captures its stderr and stdout (the access log), and stops it by signal.
//! - [`Origin`] is an HTTP/1.1 origin on 127.0.0.1:0 that records every request it receives and answers by path:
//!   `/slow?ms=N`, `/status/N`, `/ws` (WebSocket echo), `/cache/...` (cacheable), anything else 200.
//! - [`Client`] speaks HTTP/1.1 or HTTP/2 over rustls to a listener with a given SNI.
//!
//! It does not mock anything: there is no in-process fake of edgepop or of a TLS client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failure is a broken test

use std::collections::HashMap;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub use edgepop_certs::test_util::{TestCa, TestPair, write_pair};

mod cgroup;
pub use cgroup::{CgroupVersion, MemCgroup, proc_status_kib, raise_nofile_limit};

/// Polls `$cond` every 20 ms until it is true or `$timeout` passes, then fails with the message.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// The listeners most end-to-end configs start from: `{https}` with TLS, plain `{http}`, and `[tls]` reading
/// `{certs}` (more `[tls]` keys may follow it). Use it inside `format!` as `{TLS_AND_PLAIN}`.
pub const TLS_AND_PLAIN: &str = r#"[[listener]]
address = "{https}"
tls = true

[[listener]]
address = "{http}"

[tls]
certs-dir = "{certs}"
"#;

/// Installs a test subscriber once (respects `RUST_LOG`).
pub fn trace_init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A free TCP port on 127.0.0.1 (bound, then released; pingora needs the number up front).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of the `edgepop` binary built for this test run; builds it if needed. `EDGEPOP_TEST_BIN` names another
/// binary instead (e.g. a release build, to measure memory).
pub fn edgepop_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("EDGEPOP_TEST_BIN") {
            return PathBuf::from(bin);
        }
        // target/<profile>/deps/e2e-<hash> → target/<profile>/edgepop
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
        let bin = profile_dir.join("edgepop");
        // `cargo test --workspace` has just built it (the proxy crate's own tests need it). Rebuild only when a
        // source file is newer: a separate `cargo build` resolves features differently and would rebuild
        // pingora and rustls.
        if !bin_is_fresh(&bin) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "edgepop", "--bin", "edgepop"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdout(Stdio::null())
                .status()
                .expect("running cargo build for the edgepop binary");
            assert!(status.success(), "building edgepop failed");
        }
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Whether `bin` is newer than every source file of the crates it is built from.
fn bin_is_fresh(bin: &Path) -> bool {
    fn newest(dir: &Path, acc: &mut std::time::SystemTime) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                newest(&path, acc);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                *acc = (*acc).max(m);
            }
        }
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut latest = std::time::SystemTime::UNIX_EPOCH;
    for krate in ["proxy", "cache", "certs", "resolver"] {
        newest(&root.join(krate).join("src"), &mut latest);
        if let Ok(m) =
            std::fs::metadata(root.join(krate).join("Cargo.toml")).and_then(|m| m.modified())
        {
            latest = latest.max(m);
        }
    }
    built >= latest
}

/// A running edgepop process.
pub struct Edgepop {
    child: Option<Child>,
    /// Temp directory holding the config, certs and cache.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// `{https}` listener.
    pub https: SocketAddr,
    /// `{http}` listener.
    pub http: SocketAddr,
    /// `{http2}` second plain listener (e.g. with PROXY protocol).
    pub http2: SocketAddr,
    /// `{https2}` second TLS listener.
    pub https2: SocketAddr,
    /// `{admin}` listener.
    pub admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// Builder for [`Edgepop`].
pub struct EdgepopBuilder {
    config: String,
    dir: tempfile::TempDir,
    root: Option<PathBuf>,
    wait_ready: bool,
    /// `cgroup.procs` of a cgroup to start the process in.
    cgroup_procs: Option<PathBuf>,
}

impl Edgepop {
    /// Prepares a config. Placeholders: `{https}`, `{https2}`, `{http}`, `{http2}`, `{admin}` (free ports on
    /// 127.0.0.1), `{dir}` (the temp dir), `{certs}` (`{dir}/certs`, created empty).
    pub fn builder(config: &str) -> EdgepopBuilder {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        EdgepopBuilder {
            config: config.to_owned(),
            dir,
            root: None,
            wait_ready: false,
            cgroup_procs: None,
        }
    }

    /// Starts with `config` and waits for `/healthz`.
    pub async fn start(config: &str) -> Edgepop {
        Edgepop::builder(config).start().await
    }

    /// The certs directory (`{certs}`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Everything edgepop wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything edgepop wrote on stdout so far (the access log by default).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The exit status if the process has exited (`None` while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code (`None` if killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "edgepop did not exit within {timeout:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = Client::plain(self.admin).get("127.0.0.1", path).await;
        (resp.status, resp.text())
    }

    /// The value of one sample in `/metrics` (`name{labels}` exactly as printed), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl EdgepopBuilder {
    /// Wait for `/readyz` (not just `/healthz`) before returning.
    pub fn wait_ready(mut self) -> Self {
        self.wait_ready = true;
        self
    }

    /// Starts the process inside `cgroup` (through `sh`, which moves itself in, then execs edgepop), so
    /// everything it allocates is charged there.
    pub fn in_cgroup(mut self, cgroup: &MemCgroup) -> Self {
        self.cgroup_procs = Some(cgroup.procs_file());
        self
    }

    /// Uses an existing directory for `{dir}` (e.g. an earlier instance's, to restart on its cache).
    pub fn root(mut self, dir: &Path) -> Self {
        self.root = Some(dir.to_owned());
        self
    }

    /// The directory `{dir}` stands for, to put certs in before starting.
    pub fn dir(&self) -> &Path {
        self.root.as_deref().unwrap_or(self.dir.path())
    }

    /// Writes a pair from `ca` for `names` as `{certs}/<domain>/chain.pem` and `key.pem`, the layout vault-agent
    /// renders; `{certs}` is `{dir}/certs`.
    pub fn cert(&self, ca: &TestCa, domain: &str, names: &[&str]) {
        write_pair(
            &self.dir().join("certs"),
            domain,
            &ca.leaf(names),
            "chain.pem",
            "key.pem",
        )
        .unwrap_or_else(|e| panic!("writing the test pair for {domain}: {e}"));
    }

    /// Starts the process.
    pub async fn start(self) -> Edgepop {
        let ports: HashMap<&str, u16> = ["https", "https2", "http", "http2", "admin"]
            .into_iter()
            .map(|k| (k, free_port()))
            .collect();
        let root = self.dir().to_owned();
        let dir_str = root.display().to_string();
        let mut text = self.config.replace("{dir}", &dir_str);
        text = text.replace("{certs}", &format!("{dir_str}/certs"));
        for (k, port) in &ports {
            text = text.replace(&format!("{{{k}}}"), &format!("127.0.0.1:{port}"));
        }
        if !text.contains("[admin]") {
            text = format!(
                "[admin]\naddress = \"127.0.0.1:{}\"\n{text}",
                ports["admin"]
            );
        }
        if nix::unistd::geteuid().is_root() {
            text = allow_root(&text);
        }
        let config_path = root.join("edgepop.toml");
        std::fs::write(&config_path, &text).unwrap();
        let mut command = match &self.cgroup_procs {
            None => Command::new(edgepop_bin()),
            Some(procs) => {
                let mut c = Command::new("sh");
                c.args(["-c", r#"echo $$ > "$0" && exec "$@""#])
                    .arg(procs)
                    .arg(edgepop_bin());
                c
            }
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("EDGEPOP_TEST_LOG").unwrap_or_else(|_| "info,pingora=warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = capture(child.stderr.take().unwrap());
        let stdout = capture(child.stdout.take().unwrap());
        let addr = |k: &str| SocketAddr::from(([127, 0, 0, 1], ports[k]));
        let mut ep = Edgepop {
            child: Some(child),
            dir: self.dir,
            config_path,
            https: addr("https"),
            https2: addr("https2"),
            http: addr("http"),
            http2: addr("http2"),
            admin: addr("admin"),
            stderr,
            stdout,
        };
        let path = if self.wait_ready {
            "/readyz"
        } else {
            "/healthz"
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = ep.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("edgepop exited early ({status}); stderr:\n{}", ep.stderr());
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_secs(1),
                Client::plain(ep.admin).try_get("127.0.0.1", path),
            )
            .await
                && resp.status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "edgepop not up after 30 s; stderr:\n{}",
                ep.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The admin listener can come up a moment before the public ones accept.
        for l in [ep.http, ep.https, ep.http2, ep.https2] {
            if text.contains(&l.to_string()) {
                let deadline = Instant::now() + Duration::from_secs(10);
                while tokio::net::TcpStream::connect(l).await.is_err() {
                    assert!(Instant::now() < deadline, "listener {l} not accepting");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        ep
    }
}

impl Drop for Edgepop {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run as root (CI containers), edgepop refuses to start unless the configuration says so: add
/// `server.allow-root = true`, except to configurations that decide themselves (`user` or `allow-root` set).
fn allow_root(text: &str) -> String {
    let decides = |l: &str| {
        let l = l.trim_start();
        l.starts_with("allow-root") || l.starts_with("user ") || l.starts_with("user=")
    };
    if text.lines().any(decides) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 32);
    let mut done = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if !done && line.trim() == "[server]" {
            out.push_str("allow-root = true\n");
            done = true;
        }
    }
    if done {
        out
    } else {
        format!("[server]\nallow-root = true\n{out}")
    }
}

fn capture(mut r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let s = String::from_utf8_lossy(&chunk[..n]);
                    if std::env::var_os("EDGEPOP_TEST_ECHO").is_some() {
                        eprint!("{s}");
                    }
                    out.lock().unwrap().push_str(&s);
                }
            }
        }
    });
    buf
}

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Request target (origin-form).
    pub uri: String,
    /// Headers (lowercase names; repeated headers joined with ", ").
    pub headers: HashMap<String, String>,
    /// Body.
    pub body: Bytes,
}

impl Seen {
    /// A header value or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// A recording HTTP/1.1 origin.
#[derive(Clone)]
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
    /// Headers added to every response (e.g. Cache-Control).
    extra: Arc<Mutex<Vec<(String, String)>>>,
    body: Arc<Mutex<Bytes>>,
    /// Forced status for every response (0 = normal).
    status: Arc<std::sync::atomic::AtomicU16>,
    etag: Arc<Mutex<Option<String>>>,
    conns: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl Origin {
    /// Starts on 127.0.0.1:0.
    pub async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::serve(listener)
    }

    /// Starts on a given address (e.g. in another network namespace's address range).
    pub async fn start_on(addr: SocketAddr) -> Origin {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Origin::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Origin {
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            hits: Arc::default(),
            stop: Arc::default(),
            extra: Arc::default(),
            body: Arc::new(Mutex::new(Bytes::from_static(b"hello from origin\n"))),
            status: Arc::default(),
            etag: Arc::default(),
            conns: Arc::default(),
        };
        let o = origin.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = o.stop.notified() => return,
                };
                let o2 = o.clone();
                o.conns.lock().unwrap().spawn(async move {
                    let o = o2;
                    let svc = service_fn(move |req| {
                        let o = o.clone();
                        async move { Ok::<_, std::convert::Infallible>(o.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        origin
    }

    /// Stops accepting and closes every open connection: the origin is gone.
    pub fn stop(&self) {
        self.stop.notify_waiters();
        self.conns.lock().unwrap().abort_all();
    }

    /// Answers every request with `status` (0 restores normal behaviour).
    pub fn force_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Sets the ETag of every response; a matching If-None-Match gets 304.
    pub fn set_etag(&self, etag: Option<&str>) {
        *self.etag.lock().unwrap() = etag.map(str::to_owned);
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("origin saw no request")
    }

    /// Adds a header to every response.
    pub fn add_header(&self, name: &str, value: &str) {
        self.extra.lock().unwrap().push((name.into(), value.into()));
    }

    /// Sets the default response body.
    pub fn set_body(&self, body: impl Into<Bytes>) {
        *self.body.lock().unwrap() = body.into();
    }

    async fn handle(
        &self,
        mut req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let mut headers: HashMap<String, String> = HashMap::new();
        for (k, v) in req.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers
                .entry(k.as_str().to_owned())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(&v);
                })
                .or_insert(v);
        }
        let uri = req.uri().to_string();
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();

        if path == "/ws" {
            self.seen.lock().unwrap().push(Seen {
                method,
                uri,
                headers,
                body: Bytes::new(),
            });
            return websocket_echo(&mut req);
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            method,
            uri: uri.clone(),
            headers,
            body,
        });

        let mut status = 200u16;
        let params: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = v
                    .replace("%20", " ")
                    .replace("%3D", "=")
                    .replace("%2C", ",");
                (k.to_owned(), v)
            })
            .collect();
        if let Some(ms) = params.get("ms").and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
            status = code;
        }
        let forced = self.status.load(Ordering::SeqCst);
        if forced != 0 {
            status = forced;
        }
        let etag = self.etag.lock().unwrap().clone();
        let not_modified = etag.as_deref().is_some_and(|e| {
            self.seen
                .lock()
                .unwrap()
                .last()
                .is_some_and(|s| s.header("if-none-match") == e)
        });
        if not_modified && forced == 0 {
            status = 304;
        }
        let body = if status == 304 {
            Bytes::new()
        } else {
            self.body.lock().unwrap().clone()
        };
        let mut resp = hyper::Response::new(Full::new(body));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        resp.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        resp.headers_mut()
            .insert("server", "origin-server/1.0".parse().unwrap());
        if let Some(ct) = params.get("ct") {
            resp.headers_mut()
                .insert("content-type", ct.replace("%2F", "/").parse().unwrap());
        }
        if let Some(cc) = params.get("cc") {
            resp.headers_mut()
                .insert("cache-control", cc.parse().unwrap());
        }
        if let Some(vary) = params.get("vary") {
            resp.headers_mut().insert("vary", vary.parse().unwrap());
        }
        if let Some(etag) = etag {
            resp.headers_mut().insert("etag", etag.parse().unwrap());
        }
        for (k, v) in self.extra.lock().unwrap().iter() {
            resp.headers_mut().append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        resp
    }
}

fn websocket_echo(req: &mut hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::{Message, Role};

    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r =
            hyper::Response::new(Full::new(Bytes::from_static(b"not a websocket request\n")));
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) if ws.send(Message::text(format!("echo:{t}"))).await.is_err() => {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let mut r = hyper::Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    r
}

/// A response as a client saw it.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// HTTP version.
    pub version: http::Version,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How a [`Client`] connects.
#[derive(Clone)]
enum Mode {
    Plain,
    Tls {
        config: Arc<rustls::ClientConfig>,
        h2: bool,
    },
}

/// A one-connection-per-request HTTP client: plain, or TLS with SNI and HTTP/1.1 or HTTP/2.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    mode: Mode,
    headers: Vec<(String, String)>,
}

impl Client {
    /// Plain HTTP/1.1.
    pub fn plain(addr: SocketAddr) -> Client {
        Client {
            addr,
            mode: Mode::Plain,
            headers: Vec::new(),
        }
    }

    /// TLS trusting `ca`, ALPN h2 (`h2 = true`) or http/1.1.
    pub fn tls(addr: SocketAddr, ca: &TestCa, h2: bool) -> Client {
        let mut config = (*ca.client_config()).clone();
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Client {
            addr,
            mode: Mode::Tls {
                config: Arc::new(config),
                h2,
            },
            headers: Vec::new(),
        }
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// GET `path` with Host/SNI `host`; panics on transport errors.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.try_get(host, path)
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path} via {}: {e}", self.addr))
    }

    /// GET, returning transport errors.
    pub async fn try_get(&self, host: &str, path: &str) -> Result<Resp, String> {
        self.request("GET", host, path, Bytes::new()).await
    }

    /// Any method with a body.
    pub async fn request(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Resp, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        match &self.mode {
            Mode::Plain => {
                self.send_h1(TokioIo::new(tcp), method, host, path, body, false)
                    .await
            }
            Mode::Tls { config, h2 } => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| e.to_string())?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                if *h2 {
                    self.send_h2(TokioIo::new(tls), method, host, path, body)
                        .await
                } else {
                    self.send_h1(TokioIo::new(tls), method, host, path, body, true)
                        .await
                }
            }
        }
    }

    /// Connects with TLS and returns the leaf certificate the server presented.
    pub async fn peer_certificate(&self, sni: &str) -> Result<Vec<u8>, String> {
        let Mode::Tls { config, .. } = &self.mode else {
            return Err("not a TLS client".into());
        };
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let name =
            rustls_pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (_, conn) = tls.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| "no certificate".into())
    }

    fn build(
        &self,
        method: &str,
        uri: &str,
        host: Option<&str>,
        body: Bytes,
    ) -> hyper::Request<Full<Bytes>> {
        let mut b = hyper::Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            b = b.header("host", host);
        }
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(Full::new(body)).unwrap()
    }

    async fn send_h1<T>(
        &self,
        io: TokioIo<T>,
        method: &str,
        host: &str,
        path: &str,
        body: Bytes,
        _tls: bool,
    ) -> Result<Resp, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = self.build(method, path, Some(host), body);
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        collect(resp).await
    }

    async fn send_h2<T>(
        &self,
        io: TokioIo<T>,
        method: &str,
        host: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Resp, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let uri = format!("https://{host}{path}");
        let req = self.build(method, &uri, None, body);
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        collect(resp).await
    }
}

async fn collect(resp: hyper::Response<hyper::body::Incoming>) -> Result<Resp, String> {
    let status = resp.status().as_u16();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        version,
        headers,
        body,
    })
}

/// Whether `curl` is installed (tests that use it skip visibly otherwise).
pub fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs curl with `args`, returning (exit code, stdout, stderr). Async: the test's runtime keeps serving the
/// in-process origin while curl runs.
pub async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes raw bytes to `addr`, then reads until EOF or `timeout`; returns what came back.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    out
}

/// Reads a file written by another process (e.g. a PEM) into a string.
pub fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s
}
