//! The files in deploy/ agree with deploy/edgepop.toml.
//!
//! fly.toml (toml), process-compose.yaml (yaml-rust2), vault-agent.hcl (a small HCL reader below) and the
//! Dockerfile (its instruction syntax) are parsed, never grepped, and checked against the configuration as
//! `edgepop::Config::load` validates it: ports, PROXY protocol, signals and shutdown budgets, the admin listener,
//! the certificate layout. The last test runs `edgepop check` on the shipped file.
//! The real tools that install from the registries (hadolint, BuildKit's Dockerfile parser, `nix-instantiate`)
//! run in `deploy/check/run.sh`, called by `.ci/run`: stages, COPY sources, flake inputs and paths are checked there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgepop::{Config, ProxyProtocol};
use yaml_rust2::{Yaml, YamlLoader};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// Where the images install the configuration (Dockerfile COPY, flake, process-compose command).
const CONFIG_IN_IMAGE: &str = "/etc/edgepop/edgepop.toml";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(DEPLOY).join(name)
}

fn read(name: &str) -> String {
    let path = deploy_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn config() -> Config {
    let path = deploy_file("edgepop.toml");
    Config::load(&path).unwrap_or_else(|e| panic!("{} is invalid:\n{e}", path.display()))
}

fn admin(config: &Config) -> SocketAddr {
    config
        .admin_address
        .expect("deploy/edgepop.toml enables the admin listener")
}

fn fly() -> toml::Table {
    read("fly.toml")
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("deploy/fly.toml: {e}"))
}

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&read("process-compose.yaml"))
        .unwrap_or_else(|e| panic!("deploy/process-compose.yaml: {e}"));
    assert_eq!(
        docs.len(),
        1,
        "process-compose.yaml holds exactly one document"
    );
    docs.into_iter().next().expect("one document")
}

/// `process-compose.yaml` → `processes.<name>`, failing if it is missing.
fn process<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let p = &compose["processes"][name];
    assert!(
        p.as_hash().is_some(),
        "process-compose.yaml has no process {name:?}"
    );
    p
}

/// A fly.toml duration: an integer (seconds) or a string such as "20s" / "1m".
fn fly_duration(v: &toml::Value) -> Duration {
    match v {
        toml::Value::Integer(s) => {
            Duration::from_secs(u64::try_from(*s).expect("non-negative seconds"))
        }
        toml::Value::String(s) => {
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
            match unit {
                "" | "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                other => panic!("duration {s:?}: unit {other:?} not understood by this test"),
            }
        }
        other => panic!("duration: expected integer or string, got {other:?}"),
    }
}

/// A port in process-compose: an integer or a numeric string (its schema stores it as a string).
fn yaml_port(v: &Yaml) -> u16 {
    match v {
        Yaml::Integer(p) => u16::try_from(*p).expect("port in range"),
        Yaml::String(s) => s.parse().unwrap_or_else(|_| panic!("port {s:?}")),
        other => panic!("port: expected integer or string, got {other:?}"),
    }
}

fn yaml_u64(v: &Yaml, what: &str) -> u64 {
    v.as_i64()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or_else(|| panic!("{what}: expected a non-negative integer, got {v:?}"))
}

// ---------------------------------------------------------------------------------------------------- fly.toml

fn fly_services(fly: &toml::Table) -> &Vec<toml::Value> {
    fly.get("services")
        .and_then(toml::Value::as_array)
        .expect("fly.toml has [[services]]")
}

#[test]
fn fly_services_forward_to_the_listeners_with_proxy_protocol() {
    let config = config();
    let fly = fly();
    let mut internal_ports = BTreeSet::new();
    for service in fly_services(&fly) {
        let internal = service
            .get("internal_port")
            .and_then(toml::Value::as_integer)
            .and_then(|p| u16::try_from(p).ok())
            .expect("services.internal_port");
        internal_ports.insert(internal);
        let listener = config
            .listeners
            .iter()
            .find(|l| l.address.port() == internal)
            .unwrap_or_else(|| {
                panic!("fly.toml forwards to {internal}, which no [[listener]] binds")
            });
        assert!(
            listener.address.ip().is_unspecified(),
            "listener {} must bind all addresses to receive Fly's proxy traffic",
            listener.address
        );
        assert_eq!(
            listener.proxy_protocol,
            ProxyProtocol::Required,
            "listener {} must require the PROXY header Fly sends",
            listener.address
        );
        assert!(
            listener
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&IpAddr::from([172, 16, 0, 1]))),
            "listener {} must trust Fly's proxies (172.16.0.0/16)",
            listener.address
        );
        let ports = service
            .get("ports")
            .and_then(toml::Value::as_array)
            .expect("services.ports");
        assert!(!ports.is_empty(), "service {internal} has no ports");
        for port in ports {
            let public = port
                .get("port")
                .and_then(toml::Value::as_integer)
                .expect("services.ports.port");
            let handlers: Vec<&str> = port
                .get("handlers")
                .and_then(toml::Value::as_array)
                .expect("services.ports.handlers")
                .iter()
                .map(|h| h.as_str().expect("handler names are strings"))
                .collect();
            // Raw TCP plus the PROXY header: no "tls" (edgepop terminates TLS) and no "http" (it would rewrite).
            assert_eq!(handlers, ["proxy_proto"], "port {public}: handlers");
            let version = port
                .get("proxy_proto_options")
                .and_then(|o| o.get("version"))
                .and_then(toml::Value::as_str)
                .unwrap_or("v1");
            assert!(
                ["v1", "v2"].contains(&version),
                "port {public}: proxy_proto version {version:?}"
            );
            match public {
                443 => assert!(
                    listener.tls,
                    "443 must reach a TLS listener, got {}",
                    listener.address
                ),
                80 => assert!(
                    !listener.tls,
                    "80 must reach a plain listener, got {}",
                    listener.address
                ),
                _ => {}
            }
        }
    }
    let listener_ports: BTreeSet<u16> = config.listeners.iter().map(|l| l.address.port()).collect();
    assert_eq!(
        internal_ports, listener_ports,
        "fly.toml internal ports vs edgepop.toml listeners"
    );
    assert!(
        !internal_ports.contains(&admin(&config).port()),
        "the admin listener must not be a public service"
    );
}

#[test]
fn fly_stops_with_sigterm_after_the_drain() {
    let config = config();
    let fly = fly();
    assert_eq!(
        fly.get("kill_signal").and_then(toml::Value::as_str),
        Some("SIGTERM"),
        "fly.toml kill_signal (Fly's default SIGINT must not be relied on)"
    );
    let kill_timeout = fly_duration(fly.get("kill_timeout").expect("fly.toml kill_timeout"));
    assert!(
        kill_timeout > config.drain_timeout,
        "kill_timeout {kill_timeout:?} must exceed server.drain-timeout {:?}",
        config.drain_timeout
    );
}

#[test]
fn fly_health_check_and_metrics_use_the_admin_listener() {
    let config = config();
    let admin = admin(&config);
    assert!(
        !admin.ip().is_loopback(),
        "Fly's checks and metrics scraper reach the machine from outside: admin.address {admin} must not be loopback"
    );
    let fly = fly();
    let checks = fly
        .get("checks")
        .and_then(toml::Value::as_table)
        .expect("fly.toml [checks]");
    let healthz = checks.values().any(|check| {
        check.get("type").and_then(toml::Value::as_str) == Some("http")
            && check.get("port").and_then(toml::Value::as_integer) == Some(i64::from(admin.port()))
            && check.get("path").and_then(toml::Value::as_str) == Some("/healthz")
    });
    assert!(
        healthz,
        "fly.toml needs an http check on port {} path /healthz: {checks:?}",
        admin.port()
    );

    let metrics = fly.get("metrics").expect("fly.toml [metrics]");
    // [metrics] may also be written as [[metrics]].
    let metrics = metrics
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or(metrics);
    assert_eq!(
        metrics.get("port").and_then(toml::Value::as_integer),
        Some(i64::from(admin.port())),
        "[metrics] port"
    );
    assert_eq!(
        metrics.get("path").and_then(toml::Value::as_str),
        Some("/metrics"),
        "[metrics] path"
    );
}

#[test]
fn fly_volume_holds_the_certs_dir() {
    let config = config();
    let fly = fly();
    let mounts = fly.get("mounts").expect("fly.toml [mounts]");
    let destinations: Vec<&str> = match mounts {
        toml::Value::Array(a) => a
            .iter()
            .filter_map(|m| m.get("destination")?.as_str())
            .collect(),
        m => m
            .get("destination")
            .and_then(toml::Value::as_str)
            .into_iter()
            .collect(),
    };
    assert!(
        destinations
            .iter()
            .any(|d| config.tls.certs_dir.starts_with(Path::new(d))),
        "certs dir {} is on none of the mounts {destinations:?}",
        config.tls.certs_dir.display()
    );
}

// ------------------------------------------------------------------------------------------ process-compose.yaml

#[test]
fn process_compose_runs_the_three_daemons() {
    let compose = compose();
    assert_eq!(
        compose["version"].as_str(),
        Some("0.5"),
        "process-compose schema version"
    );
    let names: BTreeSet<&str> = compose["processes"]
        .as_hash()
        .expect("processes:")
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    for name in ["tailscaled", "vault-agent", "edgepop"] {
        assert!(
            names.contains(name),
            "process {name:?} missing from {names:?}"
        );
    }
    // Every dependency names a process and a condition process-compose knows.
    for (name, p) in compose["processes"].as_hash().expect("processes:") {
        let Some(deps) = p["depends_on"].as_hash() else {
            continue;
        };
        for (dep, cond) in deps {
            let dep = dep.as_str().expect("dependency names are strings");
            assert!(
                names.contains(dep),
                "{name:?} depends on unknown process {dep:?}"
            );
            let condition = cond["condition"].as_str().unwrap_or("process_started");
            assert!(
                [
                    "process_started",
                    "process_healthy",
                    "process_completed",
                    "process_completed_successfully",
                    "process_log_ready",
                ]
                .contains(&condition),
                "{name:?} -> {dep:?}: unknown condition {condition:?}"
            );
        }
    }
}

#[test]
fn process_compose_runs_edgepop_with_the_shipped_config() {
    let compose = compose();
    let command = process(&compose, "edgepop")["command"]
        .as_str()
        .expect("edgepop command");
    let words: Vec<&str> = command.split_whitespace().collect();
    let bin = words
        .iter()
        .position(|w| Path::new(w).file_name().is_some_and(|f| f == "edgepop"))
        .unwrap_or_else(|| panic!("edgepop command {command:?} does not run edgepop"));
    let args = &words[bin + 1..];
    assert_eq!(
        args.first(),
        Some(&"run"),
        "edgepop command {command:?}: subcommand"
    );
    let config_arg = args
        .iter()
        .position(|a| *a == "--config" || *a == "-c")
        .and_then(|i| args.get(i + 1))
        .copied()
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--config=")));
    assert_eq!(
        config_arg,
        Some(CONFIG_IN_IMAGE),
        "edgepop command {command:?}: --config"
    );
}

#[test]
fn process_compose_probes_the_admin_listener() {
    let config = config();
    let admin = admin(&config);
    let compose = compose();
    let edgepop = process(&compose, "edgepop");
    for (probe, path) in [
        ("readiness_probe", "/readyz"),
        ("liveness_probe", "/healthz"),
    ] {
        let get = &edgepop[probe]["http_get"];
        assert!(
            get.as_hash().is_some(),
            "edgepop {probe} must be an http_get probe"
        );
        assert_eq!(
            yaml_port(&get["port"]),
            admin.port(),
            "edgepop {probe} port"
        );
        assert_eq!(get["path"].as_str(), Some(path), "edgepop {probe} path");
        let host: IpAddr = get["host"]
            .as_str()
            .unwrap_or("127.0.0.1")
            .parse()
            .expect("probe host is an IP");
        assert!(
            admin.ip() == host || (admin.ip().is_unspecified() && host.is_loopback()),
            "edgepop {probe} host {host} does not reach admin.address {admin}"
        );
    }
}

#[test]
fn edgepop_never_waits_for_vault_agent() {
    let compose = compose();
    // Walk depends_on transitively from edgepop: vault-agent must not be reachable (no waiting for certificates).
    let mut seen = BTreeSet::new();
    let mut todo = vec!["edgepop".to_owned()];
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(deps) = compose["processes"][name.as_str()]["depends_on"].as_hash() {
            todo.extend(deps.keys().filter_map(Yaml::as_str).map(str::to_owned));
        }
    }
    assert!(
        !seen.contains("vault-agent"),
        "edgepop (transitively) depends on vault-agent: {seen:?}"
    );
}

#[test]
fn shutdown_budgets_nest() {
    let config = config();
    let compose = compose();
    let edgepop = process(&compose, "edgepop");
    assert_eq!(
        yaml_u64(&edgepop["shutdown"]["signal"], "edgepop shutdown.signal"),
        15,
        "SIGTERM drains"
    );
    let edgepop_timeout = Duration::from_secs(yaml_u64(
        &edgepop["shutdown"]["timeout_seconds"],
        "edgepop shutdown.timeout_seconds",
    ));
    assert!(
        edgepop_timeout > config.drain_timeout,
        "process-compose kills edgepop after {edgepop_timeout:?}, before its drain ({:?}) ends",
        config.drain_timeout
    );
    // With ordered shutdown the processes stop one after the other; Fly must wait for all of them.
    let total: u64 = compose["processes"]
        .as_hash()
        .expect("processes:")
        .values()
        .map(|p| {
            p["shutdown"]["timeout_seconds"]
                .as_i64()
                .map_or(0, |t| u64::try_from(t).unwrap_or(0))
        })
        .sum();
    let kill_timeout = fly_duration(fly().get("kill_timeout").expect("fly.toml kill_timeout"));
    assert!(
        Duration::from_secs(total) < kill_timeout,
        "shutdown timeouts add up to {total}s, not below fly.toml kill_timeout {kill_timeout:?}"
    );
}

// ----------------------------------------------------------------------------------------------- vault-agent.hcl

/// Checks vault-agent's templates against the certificate layout; returns `(domain, file)` per template.
fn cert_templates(body: &hcl::Body, config: &Config) -> Result<Vec<(String, String)>, String> {
    if body.blocks.iter().any(|b| b.kind == "exec") || body.attr("exec").is_some() {
        return Err("vault-agent must not supervise a process (exec)".into());
    }
    let mut out = Vec::new();
    for t in body.blocks.iter().filter(|b| b.kind == "template") {
        let dest = match t.body.attr("destination") {
            Some(hcl::Value::Str(d)) => PathBuf::from(d),
            other => return Err(format!("template without a string destination: {other:?}")),
        };
        if t.body.attr("command").is_some() || t.body.blocks.iter().any(|b| b.kind == "exec") {
            return Err(format!(
                "template {}: no reload command: edgepop watches the directory",
                dest.display()
            ));
        }
        match t.body.attr("perms") {
            Some(hcl::Value::Str(p)) if p == "0400" => {}
            other => {
                return Err(format!(
                    "template {}: perms must be \"0400\", got {other:?}",
                    dest.display()
                ));
            }
        }
        match t.body.attr("contents").or_else(|| t.body.attr("source")) {
            Some(hcl::Value::Str(c)) if !c.trim().is_empty() => {}
            other => {
                return Err(format!(
                    "template {}: no contents or source: {other:?}",
                    dest.display()
                ));
            }
        }
        let rel = dest.strip_prefix(&config.tls.certs_dir).map_err(|_| {
            format!(
                "template {} is outside the certs dir {}",
                dest.display(),
                config.tls.certs_dir.display()
            )
        })?;
        let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
        let [domain, file] = parts[..] else {
            return Err(format!(
                "template {}: expected <certs_dir>/<domain>/<file>",
                dest.display()
            ));
        };
        if file != config.tls.chain_file && file != config.tls.key_file {
            return Err(format!(
                "template {}: file must be {} or {}",
                dest.display(),
                config.tls.chain_file,
                config.tls.key_file
            ));
        }
        out.push((domain.to_owned(), file.to_owned()));
    }
    if out.is_empty() {
        return Err("no template blocks".into());
    }
    Ok(out)
}

#[test]
fn vault_agent_renders_the_cert_layout_without_reload_commands() {
    let config = config();
    let body = hcl::parse(&read("vault-agent.hcl"))
        .unwrap_or_else(|e| panic!("deploy/vault-agent.hcl: {e}"));
    for block in ["vault", "auto_auth", "template_config"] {
        assert!(
            body.blocks.iter().any(|b| b.kind == block),
            "vault-agent.hcl has no {block} block"
        );
    }
    let templates =
        cert_templates(&body, &config).unwrap_or_else(|e| panic!("vault-agent.hcl: {e}"));
    let mut by_domain: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (domain, file) in &templates {
        assert!(
            by_domain.entry(domain).or_default().insert(file),
            "{domain}/{file} is rendered twice"
        );
    }
    let pair = BTreeSet::from([config.tls.chain_file.as_str(), config.tls.key_file.as_str()]);
    for (domain, files) in &by_domain {
        assert_eq!(files, &pair, "{domain}: vault-agent must render both files");
        let served = config.sites.iter().flat_map(|s| &s.names).any(|name| {
            name.as_str() == *domain
                || name.strip_prefix("*.").is_some_and(|parent| {
                    domain
                        .split_once('.')
                        .is_some_and(|(_, rest)| rest == parent)
                })
        });
        assert!(
            served,
            "certificate {domain} is for no [[site]] in edgepop.toml"
        );
    }
}

#[test]
fn vault_agent_check_catches_reload_commands_and_loose_perms() {
    // The same check on variants of a template: the reader sees structure, so comments do not count.
    let config = config();
    let dir = config.tls.certs_dir.display();
    let template = |extra: &str, perms: &str| {
        format!(
            "# command = \"in a comment, ignored\"\n\
             template {{\n  destination = \"{dir}/example.com/{}\"\n  perms = \"{perms}\"\n  \
             contents = <<EOT\n{{{{ with secret \"kv/x\" }}}}{{{{ .Data.data.key }}}}{{{{ end }}}}\nEOT\n{extra}}}\n",
            config.tls.key_file
        )
    };
    let check = |text: &str| {
        let body = hcl::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        cert_templates(&body, &config)
    };
    assert!(
        check(&template("", "0400")).is_ok(),
        "{:?}",
        check(&template("", "0400"))
    );
    let err = check(&template("  command = \"pkill -HUP nginx\"\n", "0400")).expect_err("command");
    assert!(err.contains("reload command"), "{err}");
    let err = check(&template(
        "  exec {\n    command = [\"kill\"]\n  }\n",
        "0400",
    ))
    .expect_err("exec");
    assert!(err.contains("reload command"), "{err}");
    let err = check(&template("", "0644")).expect_err("perms");
    assert!(err.contains("perms"), "{err}");
    let err = check(&format!(
        "{}exec {{\n  command = [\"edgepop\"]\n}}\n",
        template("", "0400")
    ))
    .expect_err("exec");
    assert!(err.contains("supervise"), "{err}");
    let elsewhere = template("", "0400").replace(&dir.to_string(), "/tmp/certs");
    assert!(check(&elsewhere).expect_err("outside").contains("outside"));
    assert!(
        hcl::parse("template {\n  perms = \"0400\"\n").is_err(),
        "unclosed block"
    );
    assert!(
        hcl::parse("a = \"unterminated\n").is_err(),
        "unterminated string"
    );
}

// ----------------------------------------------------------------------------------------------------- Dockerfile

/// The Dockerfile's instructions as `(KEYWORD, arguments)`, continuations joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim_start();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment line inside a continued instruction
        }
        if let Some(cont) = line.trim_end().strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let (keyword, args) = pending
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((pending.trim(), ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        pending.clear();
    }
    assert!(
        pending.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    out
}

#[test]
fn dockerfile_image_matches_the_config() {
    let config = config();
    let instructions = dockerfile();
    let build = instructions
        .iter()
        .filter(|(k, _)| k == "RUN")
        .any(|(_, a)| a.contains("cargo build --release --locked -p edgepop"));
    assert!(
        build,
        "the build stage must run `cargo build --release --locked -p edgepop`"
    );

    let last_from = instructions
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("FROM");
    let runtime = &instructions[last_from..];
    let get = |kw: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == kw)
            .map(|(_, a)| a.as_str())
    };

    let entrypoint: Vec<String> = serde_json::from_str(get("ENTRYPOINT").expect("ENTRYPOINT"))
        .expect("ENTRYPOINT in exec (JSON) form, so signals reach edgepop directly");
    assert_eq!(
        entrypoint,
        ["/usr/local/bin/edgepop", "run", "--config", CONFIG_IN_IMAGE],
        "ENTRYPOINT"
    );
    assert!(
        runtime.iter().any(|(k, a)| {
            let words: Vec<&str> = a
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            k == "COPY" && words == ["deploy/edgepop.toml", CONFIG_IN_IMAGE]
        }),
        "the runtime stage must COPY deploy/edgepop.toml {CONFIG_IN_IMAGE}"
    );
    assert_eq!(get("STOPSIGNAL"), Some("SIGTERM"), "STOPSIGNAL");
    let user = get("USER").expect("USER: the image must not run as root");
    let uid = user.split(':').next().unwrap_or(user);
    assert!(uid != "root" && uid != "0", "USER {user} is root");

    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .map(|p| {
            p.trim_end_matches("/tcp")
                .parse()
                .unwrap_or_else(|_| panic!("EXPOSE {p}"))
        })
        .collect();
    let mut wanted: BTreeSet<u16> = config.listeners.iter().map(|l| l.address.port()).collect();
    wanted.insert(admin(&config).port());
    assert_eq!(exposed, wanted, "EXPOSE vs listeners + admin");
}

// --------------------------------------------------------------------------------------------------- the binary

#[test]
fn edgepop_check_accepts_the_shipped_config() {
    let path = deploy_file("edgepop.toml");
    let out = Command::new(edgepop_tests::edgepop_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("running edgepop check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "edgepop check {} failed ({}):\n{stdout}{stderr}",
        path.display(),
        out.status
    );
    assert!(
        stdout.contains(": ok ("),
        "edgepop check printed no verdict:\n{stdout}{stderr}"
    );
}

/// Just enough HCL to read vault-agent configurations: comments (`#`, `//`, `/* */`), blocks with labels,
/// attributes whose values are strings (with escapes), heredocs (`<<EOT`, `<<-EOT`), numbers, booleans, lists
/// and objects. Anything else is an error rather than a guess.
mod hcl {
    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Value {
        Str(String),
        Num(String),
        Bool(bool),
        List(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    #[derive(Debug, Default)]
    pub(super) struct Body {
        pub(super) attrs: Vec<(String, Value)>,
        pub(super) blocks: Vec<Block>,
    }

    impl Body {
        pub(super) fn attr(&self, name: &str) -> Option<&Value> {
            self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
        }
    }

    #[derive(Debug)]
    pub(super) struct Block {
        pub(super) kind: String,
        pub(super) labels: Vec<String>,
        pub(super) body: Body,
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Ident(String),
        Str(String),
        Num(String),
        Open(char),
        Close(char),
        Eq,
        Comma,
    }

    pub(super) fn parse(text: &str) -> Result<Body, String> {
        let toks = lex(text)?;
        let mut p = Parser { toks, pos: 0 };
        let body = p.body(None)?;
        match p.toks.get(p.pos) {
            None => Ok(body),
            Some(t) => Err(format!("unexpected {t:?} at top level")),
        }
    }

    fn lex(text: &str) -> Result<Vec<(Tok, usize)>, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        let mut line = 1;
        while let Some(&c) = chars.get(i) {
            let at = line;
            match c {
                '\n' => {
                    line += 1;
                    i += 1;
                }
                c if c.is_whitespace() => i += 1,
                '#' => i = skip_line(&chars, i),
                '/' if chars.get(i + 1) == Some(&'/') => i = skip_line(&chars, i),
                '/' if chars.get(i + 1) == Some(&'*') => {
                    let mut j = i + 2;
                    loop {
                        match (chars.get(j), chars.get(j + 1)) {
                            (Some('*'), Some('/')) => break,
                            (Some(ch), _) => {
                                if *ch == '\n' {
                                    line += 1;
                                }
                                j += 1;
                            }
                            (None, _) => return Err(format!("line {at}: unterminated /* comment")),
                        }
                    }
                    i = j + 2;
                }
                '"' => {
                    let mut s = String::new();
                    let mut j = i + 1;
                    loop {
                        match chars.get(j) {
                            Some('"') => break,
                            Some('\\') => {
                                let esc = chars
                                    .get(j + 1)
                                    .ok_or_else(|| format!("line {at}: dangling escape"))?;
                                s.push(match esc {
                                    'n' => '\n',
                                    't' => '\t',
                                    'r' => '\r',
                                    '"' | '\\' => *esc,
                                    other => {
                                        return Err(format!("line {at}: unknown escape \\{other}"));
                                    }
                                });
                                j += 2;
                            }
                            Some('\n') | None => {
                                return Err(format!("line {at}: unterminated string"));
                            }
                            Some(ch) => {
                                s.push(*ch);
                                j += 1;
                            }
                        }
                    }
                    toks.push((Tok::Str(s), at));
                    i = j + 1;
                }
                '<' if chars.get(i + 1) == Some(&'<') => {
                    let (s, next, lines) =
                        heredoc(&chars, i + 2).map_err(|e| format!("line {at}: {e}"))?;
                    toks.push((Tok::Str(s), at));
                    line += lines;
                    i = next;
                }
                '{' | '[' => {
                    toks.push((Tok::Open(c), at));
                    i += 1;
                }
                '}' | ']' => {
                    toks.push((Tok::Close(c), at));
                    i += 1;
                }
                '=' | ':' => {
                    toks.push((Tok::Eq, at));
                    i += 1;
                }
                ',' => {
                    toks.push((Tok::Comma, at));
                    i += 1;
                }
                c if c.is_ascii_digit()
                    || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
                {
                    let j = scan(&chars, i + 1, |ch| ch.is_ascii_alphanumeric() || ch == '.');
                    toks.push((Tok::Num(chars[i..j].iter().collect()), at));
                    i = j;
                }
                c if c.is_alphabetic() || c == '_' => {
                    let j = scan(&chars, i + 1, |ch| {
                        ch.is_alphanumeric() || ch == '_' || ch == '-'
                    });
                    toks.push((Tok::Ident(chars[i..j].iter().collect()), at));
                    i = j;
                }
                other => return Err(format!("line {at}: unexpected character {other:?}")),
            }
        }
        Ok(toks)
    }

    fn skip_line(chars: &[char], from: usize) -> usize {
        scan(chars, from, |c| c != '\n')
    }

    fn scan(chars: &[char], from: usize, keep: impl Fn(char) -> bool) -> usize {
        let mut j = from;
        while chars.get(j).is_some_and(|c| keep(*c)) {
            j += 1;
        }
        j
    }

    /// `<<EOT` / `<<-EOT` (from just after `<<`): the text up to the line holding only the marker.
    /// Returns the text, the index after the closing marker and the number of newlines consumed.
    fn heredoc(chars: &[char], from: usize) -> Result<(String, usize, usize), String> {
        let indented = chars.get(from) == Some(&'-');
        let start = if indented { from + 1 } else { from };
        let end = scan(chars, start, |c| c.is_alphanumeric() || c == '_');
        let marker: String = chars[start..end].iter().collect();
        if marker.is_empty() || chars.get(end) != Some(&'\n') {
            return Err("heredoc marker must be followed by a newline".into());
        }
        let rest: String = chars[end + 1..].iter().collect();
        let mut body = Vec::new();
        let mut consumed = end + 1;
        for (n, l) in rest.split('\n').enumerate() {
            if l.trim() == marker {
                let text = if indented {
                    let indent = body
                        .iter()
                        .filter(|b: &&&str| !b.trim().is_empty())
                        .map(|b| b.len() - b.trim_start().len())
                        .min()
                        .unwrap_or(0);
                    body.iter()
                        .map(|b| b.get(indent..).unwrap_or("").to_owned() + "\n")
                        .collect()
                } else {
                    body.iter().map(|b| format!("{b}\n")).collect()
                };
                return Ok((text, consumed + l.chars().count(), n + 1));
            }
            body.push(l);
            consumed += l.chars().count() + 1;
        }
        Err(format!("heredoc {marker} is never closed"))
    }

    struct Parser {
        toks: Vec<(Tok, usize)>,
        pos: usize,
    }

    impl Parser {
        fn bump(&mut self) -> Option<(Tok, usize)> {
            let t = self.toks.get(self.pos).cloned();
            self.pos += 1;
            t
        }

        fn peek(&self) -> Option<&Tok> {
            self.toks.get(self.pos).map(|(t, _)| t)
        }

        /// Items until `close` (or the end, at top level).
        fn body(&mut self, close: Option<char>) -> Result<Body, String> {
            let mut body = Body::default();
            loop {
                match (self.bump(), close) {
                    (None, None) => return Ok(body),
                    (None, Some(c)) => return Err(format!("missing {c:?} at end of file")),
                    (Some((Tok::Close(c), _)), Some(want)) if c == want => return Ok(body),
                    (Some((Tok::Ident(name), at)), _) => {
                        if self.peek() == Some(&Tok::Eq) {
                            self.pos += 1;
                            let value = self.value(at)?;
                            body.attrs.push((name, value));
                            continue;
                        }
                        let mut labels = Vec::new();
                        loop {
                            match self.bump() {
                                Some((Tok::Str(l) | Tok::Ident(l), _)) => labels.push(l),
                                Some((Tok::Open('{'), _)) => break,
                                other => {
                                    return Err(format!(
                                        "line {at}: block {name}: unexpected {other:?}"
                                    ));
                                }
                            }
                        }
                        let inner = self.body(Some('}'))?;
                        body.blocks.push(Block {
                            kind: name,
                            labels,
                            body: inner,
                        });
                    }
                    (Some((t, at)), _) => return Err(format!("line {at}: unexpected {t:?}")),
                }
            }
        }

        fn value(&mut self, at: usize) -> Result<Value, String> {
            match self.bump() {
                Some((Tok::Str(s), _)) => Ok(Value::Str(s)),
                Some((Tok::Num(n), _)) => Ok(Value::Num(n)),
                Some((Tok::Ident(b), _)) if b == "true" || b == "false" => {
                    Ok(Value::Bool(b == "true"))
                }
                Some((Tok::Open('['), _)) => {
                    let mut items = Vec::new();
                    loop {
                        match self.peek() {
                            Some(Tok::Close(']')) => {
                                self.pos += 1;
                                return Ok(Value::List(items));
                            }
                            Some(Tok::Comma) => self.pos += 1,
                            Some(_) => items.push(self.value(at)?),
                            None => return Err(format!("line {at}: unterminated list")),
                        }
                    }
                }
                Some((Tok::Open('{'), _)) => {
                    let mut fields = Vec::new();
                    loop {
                        match self.bump() {
                            Some((Tok::Close('}'), _)) => return Ok(Value::Object(fields)),
                            Some((Tok::Comma, _)) => {}
                            Some((Tok::Ident(k) | Tok::Str(k), line)) => {
                                if self.bump().map(|(t, _)| t) != Some(Tok::Eq) {
                                    return Err(format!("line {line}: object key {k} without '='"));
                                }
                                let v = self.value(line)?;
                                fields.push((k, v));
                            }
                            other => {
                                return Err(format!("line {at}: unexpected {other:?} in object"));
                            }
                        }
                    }
                }
                other => Err(format!("line {at}: expected a value, got {other:?}")),
            }
        }
    }

    #[test]
    fn reads_the_hcl_vault_agent_uses() {
        let body = parse(
            "# comment\nvault {\n  address = \"https://v:8200\" // trailing\n  retry { num_retries = 5 }\n}\n\
             /* block\n comment */\nauto_auth {\n  method \"approle\" {\n    config = {\n      \
             role_id_file_path = \"/r\"\n      remove = false\n    }\n  }\n}\n\
             list = [\"a\", \"b\\\"c\"]\n\
             t {\n  contents = <<-EOT\n    line one\n      indented\n  EOT\n  after = 1\n}\n",
        )
        .expect("parses");
        let vault = &body.blocks[0];
        assert_eq!(vault.kind, "vault");
        assert_eq!(
            vault.body.attr("address"),
            Some(&Value::Str("https://v:8200".into()))
        );
        assert_eq!(
            vault.body.blocks[0].body.attr("num_retries"),
            Some(&Value::Num("5".into()))
        );
        let method = &body.blocks[1].body.blocks[0];
        assert_eq!(method.labels, ["approle"]);
        let Some(Value::Object(config)) = method.body.attr("config") else {
            panic!("config object")
        };
        assert_eq!(config[1], ("remove".to_owned(), Value::Bool(false)));
        assert_eq!(
            body.attr("list"),
            Some(&Value::List(vec![
                Value::Str("a".into()),
                Value::Str("b\"c".into())
            ]))
        );
        let t = &body.blocks[2].body;
        assert_eq!(
            t.attr("contents"),
            Some(&Value::Str("line one\n  indented\n".into()))
        );
        assert_eq!(t.attr("after"), Some(&Value::Num("1".into())));
    }
}
