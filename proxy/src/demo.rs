//! `edgepop demo`: everything a newcomer needs to see edgepop work, on loopback only.
//!
//! It generates a throw-away CA and a certificate for `localhost` in the vault-agent layout, starts a small origin
//! that echoes the request it received (so the forwarded headers are visible), writes a configuration next to
//! them, prints curl commands, and runs edgepop with that configuration.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config::Config;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Generates the demo files, starts the origin and returns the configuration to run.
pub fn prepare(https_port: u16, http_port: u16) -> Result<Config, BoxError> {
    let dir = std::env::temp_dir().join(format!("edgepop-demo-{}", std::process::id()));
    let ca_path = write_certs(&dir)?;
    let origin = start_origin()?;
    let admin = free_port()?;
    let config_path = dir.join("edgepop.toml");
    let toml = format!(
        r#"# Written by `edgepop demo`.
[server]
threads = 2
drain-timeout = "2s"
allow-root = true  # a loopback try-out; production configs set `user` instead

[admin]
address = "127.0.0.1:{admin}"

[[listener]]
address = "127.0.0.1:{https_port}"
tls = true

[[listener]]
address = "127.0.0.1:{http_port}"

[tls]
certs-dir = "certs"
default-cert = "localhost"

[upstream.demo]
servers = ["{origin}"]

[[site]]
names = ["localhost", "127.0.0.1"]
upstream = "demo"
"#
    );
    std::fs::write(&config_path, toml)?;
    let config = Config::load(&config_path).map_err(|e| e.to_string())?;
    let ca = ca_path.display();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "edgepop demo: built-in origin on http://{origin}, files in {dir}\n\
         \n  HTTPS, HTTP/2:   curl --cacert {ca} --http2 https://localhost:{https_port}/\n  \
         HTTPS, HTTP/1.1: curl --cacert {ca} --http1.1 https://localhost:{https_port}/\n  \
         plain HTTP:      curl http://localhost:{http_port}/\n  \
         metrics:         curl http://127.0.0.1:{admin}/metrics\n\
         \nCtrl-C stops edgepop (it drains first).\n",
        dir = dir.display()
    )?;
    Ok(config)
}

fn write_certs(dir: &Path) -> Result<PathBuf, BoxError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let domain_dir = dir.join("certs").join("localhost");
    std::fs::create_dir_all(&domain_dir)?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "edgepop demo CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem())?;
    write_private(&domain_dir.join("chain.pem"), leaf.pem().as_bytes())?;
    write_private(
        &domain_dir.join("key.pem"),
        leaf_key.serialize_pem().as_bytes(),
    )?;
    Ok(ca_path)
}

/// Writes with mode 0600, as vault-agent's templates do (0400 there).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A tiny HTTP/1.1 origin on 127.0.0.1 that echoes the request line and headers, on its own thread.
fn start_origin() -> Result<SocketAddr, BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-origin".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let svc =
                            service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                                let mut body = format!(
                                    "hello from the edgepop demo origin\n\n{} {} {:?}\n",
                                    req.method(),
                                    req.uri(),
                                    req.version()
                                );
                                for (name, value) in req.headers() {
                                    body.push_str(&format!(
                                        "{name}: {}\n",
                                        value.to_str().unwrap_or("<binary>")
                                    ));
                                }
                                let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                                resp.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                                );
                                Ok::<_, std::convert::Infallible>(resp)
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(addr)
}
