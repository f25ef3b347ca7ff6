//! The response cache against a counting origin: hits, expiry, variants, revalidation, stale serving over
//! HTTP/1.1 and HTTP/2, invalidation, coalescing, persistence across restarts, corruption, purge.

use std::time::Duration;

use bytes::Bytes;
use edgepop_tests::{Client, Edgepop, Origin, TestCa, assert_eventually, trace_init};

fn config(origin: &Origin, extra_site: &str) -> String {
    format!(
        r#"
[admin]
address = "{{admin}}"
token-file = "{{dir}}/token"

[[listener]]
address = "{{http}}"

[[listener]]
address = "{{https}}"
tls = true

[tls]
certs-dir = "{{certs}}"

[cache]
memory = "4MiB"
lock-timeout = "5s"

[cache.disk]
path = "{{dir}}/cache"
max-size = "64MiB"

[upstream.app]
servers = ["{origin}"]
connect-timeout = "1s"
read-timeout = "3s"

[[site]]
names = ["a.test"]
upstream = "app"
cache-grace = "1h"
{extra_site}
"#,
        origin = origin.addr
    )
}

async fn start_with(origin: &Origin, extra_site: &str) -> (Edgepop, TestCa) {
    start_in(origin, extra_site, None).await
}

async fn start_in(
    origin: &Origin,
    extra_site: &str,
    root: Option<&std::path::Path>,
) -> (Edgepop, TestCa) {
    trace_init();
    let ca = TestCa::new();
    let mut builder = Edgepop::builder(&config(origin, extra_site));
    if let Some(root) = root {
        builder = builder.root(root);
    }
    std::fs::write(builder.dir().join("token"), "s3cret\n").unwrap();
    builder.cert(&ca, "a.test", &["a.test"]);
    (builder.wait_ready().start().await, ca)
}

async fn start(origin: &Origin) -> (Edgepop, TestCa) {
    start_with(origin, "").await
}

async fn get(ep: &Edgepop, path: &str) -> edgepop_tests::Resp {
    Client::plain(ep.http).get("a.test", path).await
}

#[tokio::test]
async fn hits_do_not_reach_the_origin_and_carry_age() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    let r = get(&ep, "/p?cc=max-age%3D60").await;
    assert_eq!((r.status, r.header("x-cache-status")), (200, "MISS"));
    let r = get(&ep, "/p?cc=max-age%3D60").await;
    assert_eq!((r.status, r.header("x-cache-status")), (200, "HIT"));
    assert_eq!(r.text(), "hello from origin\n");
    assert!(
        r.header("age").parse::<u64>().is_ok(),
        "a hit carries Age: {:?}",
        r.headers
    );
    assert_eq!(origin.hits(), 1);
    // counted in the logging phase, which runs after the client has the response
    assert_eventually!(
        ep.metric(r#"edgepop_cache_lookups_total{result="HIT"}"#)
            .await
            >= 1.0,
        Duration::from_secs(5),
        "the hit is not counted"
    );
}

#[tokio::test]
async fn http1_and_http2_share_one_entry() {
    let origin = Origin::start().await;
    let (ep, ca) = start(&origin).await;
    let r = Client::tls(ep.https, &ca, false)
        .get("a.test", "/shared?cc=max-age%3D60")
        .await;
    assert_eq!(r.header("x-cache-status"), "MISS");
    let r = Client::tls(ep.https, &ca, true)
        .get("a.test", "/shared?cc=max-age%3D60")
        .await;
    assert_eq!(r.header("x-cache-status"), "HIT");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn max_age_expires_and_no_store_private_are_not_stored() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    assert_eq!(
        get(&ep, "/e?cc=max-age%3D1").await.header("x-cache-status"),
        "MISS"
    );
    assert_eq!(
        get(&ep, "/e?cc=max-age%3D1").await.header("x-cache-status"),
        "HIT"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(&ep, "/e?cc=max-age%3D1").await.header("x-cache-status"),
        "EXPIRED"
    );
    assert_eq!(origin.hits(), 2);

    for cc in ["no-store", "private%2C%20max-age%3D60"] {
        let path = format!("/n?cc={cc}");
        let before = origin.hits();
        get(&ep, &path).await;
        let r = get(&ep, &path).await;
        assert_eq!(r.header("x-cache-status"), "MISS", "{cc}");
        assert_eq!(origin.hits(), before + 2, "{cc} must not be stored");
    }
}

#[tokio::test]
async fn vary_stores_variants_separately() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    let path = "/v?cc=max-age%3D60&vary=accept-language";
    let en = Client::plain(ep.http).header("accept-language", "en");
    let fr = Client::plain(ep.http).header("accept-language", "fr");
    assert_eq!(
        en.get("a.test", path).await.header("x-cache-status"),
        "MISS"
    );
    assert_eq!(
        fr.get("a.test", path).await.header("x-cache-status"),
        "MISS"
    );
    assert_eq!(en.get("a.test", path).await.header("x-cache-status"), "HIT");
    assert_eq!(fr.get("a.test", path).await.header("x-cache-status"), "HIT");
    assert_eq!(origin.hits(), 2);
    // Vary: * is never reused.
    get(&ep, "/star?cc=max-age%3D60&vary=*").await;
    assert_eq!(
        get(&ep, "/star?cc=max-age%3D60&vary=*")
            .await
            .header("x-cache-status"),
        "MISS"
    );
}

#[tokio::test]
async fn authorization_requests_are_cached_only_when_allowed() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    let auth = Client::plain(ep.http).header("authorization", "Bearer x");
    auth.get("a.test", "/auth?cc=max-age%3D60").await;
    auth.get("a.test", "/auth?cc=max-age%3D60").await;
    assert_eq!(
        origin.hits(),
        2,
        "max-age alone does not allow storing an authorized response"
    );
    auth.get("a.test", "/pub?cc=public%2C%20max-age%3D60").await;
    assert_eq!(
        auth.get("a.test", "/pub?cc=public%2C%20max-age%3D60")
            .await
            .header("x-cache-status"),
        "HIT"
    );
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn a_304_revalidates_the_stored_response() {
    let origin = Origin::start().await;
    origin.set_etag(Some("\"v1\""));
    let (ep, _) = start(&origin).await;
    get(&ep, "/r?cc=max-age%3D1").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get(&ep, "/r?cc=max-age%3D1").await;
    assert_eq!((r.status, r.header("x-cache-status")), (200, "REVALIDATED"));
    assert_eq!(r.text(), "hello from origin\n");
    assert_eq!(origin.last().header("if-none-match"), "\"v1\"");
    assert_eq!(
        get(&ep, "/r?cc=max-age%3D1").await.header("x-cache-status"),
        "HIT"
    );
}

async fn stale_while_revalidate(h2: bool) {
    let origin = Origin::start().await;
    let (ep, ca) = start(&origin).await;
    let client = Client::tls(ep.https, &ca, h2);
    let path = "/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D60";
    assert_eq!(
        client.get("a.test", path).await.header("x-cache-status"),
        "MISS"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    origin.set_body("v2\n");
    let r = client.get("a.test", path).await;
    assert_eq!(r.status, 200, "h2={h2}");
    assert!(
        matches!(r.header("x-cache-status"), "STALE" | "UPDATING"),
        "h2={h2}: {:?}",
        r.headers
    );
    assert_eq!(
        r.text(),
        "hello from origin\n",
        "the stale body is served at once"
    );
    assert_eventually!(
        origin.hits() == 2,
        Duration::from_secs(5),
        "no background revalidation (h2={h2})"
    );
    assert_eventually!(
        client.get("a.test", path).await.text() == "v2\n",
        Duration::from_secs(5),
        "the refreshed body never became a hit (h2={h2})"
    );
    assert!(!ep.stderr().contains("panicked"), "{}", ep.stderr());
}

#[tokio::test]
async fn stale_while_revalidate_over_http1() {
    stale_while_revalidate(false).await;
}

#[tokio::test]
async fn stale_while_revalidate_over_http2() {
    stale_while_revalidate(true).await;
}

#[tokio::test]
async fn stale_if_error_and_grace_keep_the_site_up() {
    for h2 in [false, true] {
        let origin = Origin::start().await;
        let (ep, ca) = start(&origin).await;
        let client = Client::tls(ep.https, &ca, h2);
        client.get("a.test", "/g?cc=max-age%3D1").await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // The origin answers 5xx: the stale copy is served within the grace period.
        origin.force_status(503);
        let r = client.get("a.test", "/g?cc=max-age%3D1").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello from origin\n"),
            "h2={h2} 5xx"
        );
        // The origin is gone entirely.
        origin.stop();
        let r = client.get("a.test", "/g?cc=max-age%3D1").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello from origin\n"),
            "h2={h2} down"
        );
        // Something never cached is a plain 502.
        assert_eq!(client.get("a.test", "/never").await.status, 502);
    }
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_url() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    let path = "/doc?cc=max-age%3D60";
    get(&ep, path).await;
    assert_eq!(get(&ep, path).await.header("x-cache-status"), "HIT");
    let r = Client::plain(ep.http)
        .request("POST", "a.test", path, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eventually!(
        get(&ep, path).await.header("x-cache-status") == "MISS",
        Duration::from_secs(5),
        "POST did not invalidate"
    );
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_request() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = Client::plain(ep.http);
        tasks.push(tokio::spawn(async move {
            client.get("a.test", "/c?cc=max-age%3D60&ms=400").await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello from origin\n");
    }
    assert_eq!(origin.hits(), 1, "coalescing failed");
    // the nine that did not fetch either waited on the lock (coalesced) or came after the fill (hits);
    // counted in the logging phase, after the client has its response
    assert_eventually!(
        ep.metric("edgepop_cache_lock_wait_seconds_count").await >= 1.0,
        Duration::from_secs(5),
        "no coalesced wait counted"
    );
    assert!(ep.metric("edgepop_cache_lock_wait_seconds_count").await <= 9.0);
    assert!(ep.metric("edgepop_cache_lock_wait_seconds_sum").await > 0.0);
}

#[tokio::test]
async fn entries_survive_a_restart_and_corrupt_ones_are_misses() {
    let origin = Origin::start().await;
    let (mut ep, _) = start(&origin).await;
    get(&ep, "/keep?cc=max-age%3D600").await;
    get(&ep, "/spoil?cc=max-age%3D600").await;
    assert_eq!(origin.hits(), 2);
    let cache_dir = ep.dir.path().join("cache");
    // Disk writes happen in the background: wait for both files.
    assert_eventually!(
        entry_files(&cache_dir).len() == 2,
        Duration::from_secs(5),
        "entries not written to disk"
    );
    ep.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(ep.wait_exit(Duration::from_secs(5)).await, Some(0));

    // Corrupt the newest-looking /spoil entry: flip one byte in each file that holds "/spoil".
    for f in entry_files(&cache_dir) {
        let mut bytes = std::fs::read(&f).unwrap();
        if bytes.windows(6).any(|w| w == b"/spoil") {
            let last = bytes.len() - 10;
            bytes[last] ^= 0xff;
            std::fs::write(&f, bytes).unwrap();
        }
    }

    // Same directory, new process.
    let (ep2, _) = start_in(&origin, "", Some(ep.dir.path())).await;
    let r = get(&ep2, "/keep?cc=max-age%3D600").await;
    assert_eq!(r.header("x-cache-status"), "HIT", "persisted entry");
    let r = get(&ep2, "/spoil?cc=max-age%3D600").await;
    assert_eq!(
        r.header("x-cache-status"),
        "MISS",
        "a corrupt entry must be a miss"
    );
    assert_eq!(r.text(), "hello from origin\n");
    assert_eq!(origin.hits(), 3);
}

fn entry_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return out;
    };
    for sub in subdirs.flatten() {
        if let Ok(files) = std::fs::read_dir(sub.path()) {
            for f in files.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if f.path().is_file()
                    && name.len() == 32
                    && name.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn purge_requires_the_token_and_drops_urls_and_prefixes() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    for p in [
        "/a/1?cc=max-age%3D600",
        "/a/2?cc=max-age%3D600",
        "/b?cc=max-age%3D600",
    ] {
        get(&ep, p).await;
        assert_eq!(get(&ep, p).await.header("x-cache-status"), "HIT");
    }
    let admin = Client::plain(ep.admin);
    let r = admin
        .request(
            "POST",
            "127.0.0.1",
            "/purge?prefix=http://a.test/a/",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "no token");
    let admin = admin.header("authorization", "Bearer s3cret");
    let r = admin
        .request(
            "POST",
            "127.0.0.1",
            "/purge?url=http%3A%2F%2Fa.test%2Fb%3Fcc%3Dmax-age%253D600",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "purged 1\n"));
    let r = admin
        .request(
            "POST",
            "127.0.0.1",
            "/purge?prefix=http://a.test/a/",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "purged 2\n"));
    assert_eq!(
        get(&ep, "/b?cc=max-age%3D600")
            .await
            .header("x-cache-status"),
        "MISS"
    );
    assert_eq!(
        get(&ep, "/a/1?cc=max-age%3D600")
            .await
            .header("x-cache-status"),
        "MISS"
    );
}

#[tokio::test]
async fn websocket_upgrades_bypass_the_cache() {
    let origin = Origin::start().await;
    let (ep, _) = start(&origin).await;
    let request = http::Request::builder()
        .uri(format!("ws://{}/ws", ep.http))
        .header("host", "a.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(ep.http).await.unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    .expect("upgrade hung with the cache enabled")
    .unwrap();
    assert_eq!(resp.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo:hi");
}
