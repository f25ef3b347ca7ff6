use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse("edgepop.toml", text)
}

const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[upstream.app]
servers = ["127.0.0.1:3000", "origin.example.ts.net:80", "[::1]:8080"]

[[site]]
names = ["example.com", "*.example.com"]
upstream = "app"
"#;

#[test]
fn minimal_config_has_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.threads, 1);
    assert_eq!(c.drain_timeout, Duration::from_secs(10));
    assert_eq!(c.admin_address, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.http.max_body_size, 10 * 1024 * 1024);
    assert_eq!(c.http.unknown_host_status, 421);
    assert_eq!(c.http.sni_host_mismatch, SniHostMismatch::Refuse);
    let up = &c.upstreams["app"];
    assert_eq!(up.connect_timeout, Duration::from_secs(3));
    assert_eq!(up.read_timeout, Duration::from_secs(3));
    assert_eq!(up.send_timeout, Duration::from_secs(3));
    assert_eq!(up.servers[0].ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(up.servers[1].host, "origin.example.ts.net");
    assert_eq!(up.servers[1].ip, None);
    assert_eq!(up.servers[2].to_string(), "[::1]:8080");
    assert_eq!(c.listeners[0].proxy_protocol, ProxyProtocol::Off);
    assert_eq!(c.tls.chain_file, "chain.pem");
    assert_eq!(c.dns.serve_stale, Duration::from_secs(86_400));
}

#[test]
fn shipped_deploy_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edgepop.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        c.listeners
            .iter()
            .any(|l| l.tls && l.proxy_protocol == ProxyProtocol::Required)
    );
    assert_eq!(
        c.listeners[0].trusted_proxies[0],
        "172.16.0.0/16".parse::<IpNet>().unwrap()
    );
    assert_eq!(c.http.max_body_size, 10 * 1024 * 1024);
}

/// Each broken input and the `line:col: key: message` it must produce (prefix match on the message).
#[test]
fn errors_name_line_column_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\nbogus = 1\n",
            "edgepop.toml:3:1: unknown field `bogus`",
        ),
        (
            "[[listener]]\naddress = \"nope\"\n",
            "edgepop.toml:2:11: listener[0].address: invalid address \"nope\"",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\n[upstream.a]\nservers = [\"x:1\"]\nconnect-timeout = \"3 parsecs\"\n",
            "edgepop.toml:5:19: upstream.a.connect-timeout: invalid duration \"3 parsecs\"",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\n[[site]]\nnames = [\"a.test\"]\nupstream = \"missing\"\n",
            "edgepop.toml:5:12: site[0].upstream: no [upstream.missing] is defined",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\n[upstream.a]\nservers = [\"no-port\"]\n",
            "edgepop.toml:4:12: upstream.a.servers[0]: \"no-port\" has no port",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\nproxy-protocol = \"sometimes\"\ntrusted-proxies = [\"10.0.0.0/8\"]\n",
            "edgepop.toml:3:18: listener[0].proxy-protocol: unknown mode \"sometimes\"",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\nproxy-protocol = true\ntrusted-proxies = [\"10.0.0.0/33\"]\n",
            "edgepop.toml:4:20: listener[0].trusted-proxies[0]: invalid CIDR",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\n[http]\nmax-body-size = \"ten megs\"\n",
            "edgepop.toml:4:17: http.max-body-size: invalid size",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\n[upstream.a]\nservers = [\"127.0.0.1:1\"]\n[[site]]\nnames = [\"a..b\"]\nupstream = \"a\"\n",
            "edgepop.toml:6:10: site[0].names[0]: \"a..b\" is not a valid host name",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:80\"\n[http]\nsni-host-mismatch = \"ignore\"\n",
            "edgepop.toml:4:21: http.sni-host-mismatch: unknown mode \"ignore\"; expected \"refuse\" or \"allow\"",
        ),
        (
            "[server]\nthreads = \"two\"\n",
            "edgepop.toml:2:11: invalid type",
        ),
        (
            "",
            "edgepop.toml:1:1: listener: at least one [[listener]] is required",
        ),
    ];
    for (input, want) in cases {
        let errors = parse(input).expect_err(input);
        let first = errors.0[0].to_string();
        assert!(
            first.starts_with(want),
            "input:\n{input}\ngot:  {first}\nwant: {want}"
        );
    }
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let errors = parse(
        "[[listener]]\naddress = \"bad\"\n[server]\ndrain-timeout = \"x\"\n[dns]\nip-strategy = \"ipv5\"\n",
    )
    .unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.drain-timeout",
            "listener[0].address",
            "dns.ip-strategy"
        ]
    );
}

#[test]
fn duplicate_names_across_sites_are_refused() {
    let text = format!("{MINIMAL}\n[[site]]\nnames = [\"EXAMPLE.com\"]\nupstream = \"app\"\n");
    let errors = parse(&text).unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("\"example.com\" is already served by site[0]"),
        "{errors}"
    );
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let errors = parse("[[listener]]\naddress = \"127.0.0.1:80\"\nproxy-protocol = \"optional\"\n")
        .unwrap_err();
    assert!(
        errors.to_string().contains("no trusted-proxies are listed"),
        "{errors}"
    );
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é=1\nx", 2), (1, 2));
}

#[test]
fn sni_host_mismatch_modes_parse() {
    for (value, want) in [
        ("refuse", SniHostMismatch::Refuse),
        ("allow", SniHostMismatch::Allow),
    ] {
        let c = parse(&format!(
            "{MINIMAL}\n[http]\nsni-host-mismatch = \"{value}\"\n"
        ))
        .unwrap();
        assert_eq!(c.http.sni_host_mismatch, want, "{value}");
    }
    let errors = parse(&format!("{MINIMAL}\n[http]\nsni-host-mismatch = true\n")).unwrap_err();
    assert!(errors.to_string().contains("invalid type"), "{errors}");
}
