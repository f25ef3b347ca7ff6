//! The `edgepop` command line: exit codes and error text, run as a real process.

// Tests fail by panicking; helper functions here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn edgepop(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgepop"))
        .args(args)
        .output()
        .expect("running edgepop");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("edgepop.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = edgepop(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("edgepop {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_the_shipped_deploy_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/edgepop.toml");
    let (code, out, err) = edgepop(&["check", "--config", path]);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("ok ("), "{out}");
    // The certs directory does not exist on a build machine: reported, not fatal.
    assert!(out.contains("warning"), "{out}");
}

#[test]
fn check_reports_every_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[[listener]]\naddress = \"0.0.0.0:99999\"\n\n[upstream.app]\nservers = [\"origin:80\"]\nread-timeout = \"soon\"\n\n[[site]]\nnames = [\"a.test\"]\nupstream = \"nope\"\n",
    );
    let (code, out, err) = edgepop(&["check", "--config", &path]);
    assert_eq!(code, Some(64), "stdout: {out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{path}:2:11: listener[0].address: invalid address"
        )),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{path}:6:16: upstream.app.read-timeout: invalid duration"
        )),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{path}:10:12: site[0].upstream: no [upstream.nope]"
        )),
        "{err}"
    );
}

#[test]
fn check_reports_toml_syntax_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[[listener]]\naddress = 127.0.0.1:80\n");
    let (code, _, err) = edgepop(&["check", "--config", &path]);
    assert_eq!(code, Some(64));
    assert!(err.starts_with(&format!("{path}:2:")), "{err}");
}

#[test]
fn run_with_a_bad_config_exits_64_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[[listener]]\naddress = \"nope\"\n");
    let (code, _, err) = edgepop(&["run", "--config", &path]);
    assert_eq!(code, Some(64));
    assert!(err.contains("invalid configuration"), "{err}");
    assert!(err.contains(":2:11: listener[0].address"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = edgepop(&["check", "--config", "/nonexistent/edgepop.toml"]);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("/nonexistent/edgepop.toml: cannot read configuration file"),
        "{err}"
    );
}

#[test]
fn run_reports_a_port_in_use() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        &format!("[admin]\naddress = \"off\"\n[[listener]]\naddress = \"{addr}\"\n"),
    );
    let (code, _, err) = edgepop(&["run", "--config", &path]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
