//! Privilege drop: bind the listeners as root (ports below 1024), then become `server.user` before anything else
//! runs. This replaces the old `runas` helper.
//!
//! - [`drop_privileges`] runs on the main thread after `BoundSockets::bind` and before `build`, while it is the only
//!   thread of the process. The access-log writer (started in `build`), pingora's runtimes and the background
//!   services (started by `Server::run`) are all created later and so never run as root. (glibc and musl apply the
//!   set*id calls to every thread anyway; starting nothing as root first is the stronger guarantee.)
//! - The order is supplementary groups (`initgroups`, or `setgroups` for a uid without a passwd entry), then `setgid`,
//!   then `setuid`: once the uid is not 0, the groups can no longer be changed. The result is verified (real and
//!   effective ids, and `setuid(0)` must now fail) before anything is served.
//! - Started as root without `server.user`, edgepop refuses to run unless `server.allow-root = true`. Not started
//!   as root, nothing changes: a `server.user` naming someone else is a warning.
//!
//! [`check_access`] then checks, as the user edgepop now runs as, the files it is about to open: the cache
//! directory and the access log must be writable (an error otherwise), the certificates directory and the
//! configuration file readable (a warning: certificates and reloads may be fixed while edgepop runs).

use std::ffi::CString;
use std::fmt;
use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{AccessFlags, Gid, Group, Uid, User};

use crate::Error;
use crate::config::{AccessLogFormat, Config};

/// The user edgepop runs as once [`drop_privileges`] returned, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunningAs {
    pub(crate) uid: Uid,
    pub(crate) gid: Gid,
    /// The passwd name, or the uid when there is none.
    pub(crate) name: String,
}

impl RunningAs {
    fn current() -> RunningAs {
        let uid = nix::unistd::getuid();
        let name = User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        RunningAs {
            uid,
            gid: nix::unistd::getgid(),
            name,
        }
    }
}

impl fmt::Display for RunningAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The identity `server.user` / `server.group` stand for on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    uid: Uid,
    gid: Gid,
    /// The passwd name, when the user has an entry (needed by `initgroups`).
    passwd_name: Option<String>,
    /// As configured, for messages.
    label: String,
}

fn not_found(what: String, why: &str) -> Error {
    Error::Privileges {
        what,
        source: io::Error::new(io::ErrorKind::NotFound, why.to_owned()),
    }
}

fn lookup_failed(what: String, e: Errno) -> Error {
    Error::Privileges {
        what,
        source: e.into(),
    }
}

/// Looks `user` (name or uid) and `group` (name or gid; default the user's primary group) up.
fn resolve(user: &str, group: Option<&str>) -> Result<Target, Error> {
    let numeric = user.parse::<u32>().ok();
    let entry = match numeric {
        Some(n) => User::from_uid(Uid::from_raw(n)),
        None => User::from_name(user),
    }
    .map_err(|e| lookup_failed(format!("user {user:?}"), e))?;
    let uid = match (&entry, numeric) {
        (Some(u), _) => u.uid,
        (None, Some(n)) => Uid::from_raw(n),
        (None, None) => return Err(not_found(format!("user {user:?}"), "no such user")),
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .map_err(|e| lookup_failed(format!("group {g:?}"), e))?
                    .ok_or_else(|| not_found(format!("group {g:?}"), "no such group"))?
                    .gid
            }
        },
        None => match &entry {
            Some(u) => u.gid,
            None => {
                return Err(not_found(
                    format!("user {user:?}"),
                    "uid without a passwd entry has no primary group; set server.group",
                ));
            }
        },
    };
    Ok(Target {
        uid,
        gid,
        passwd_name: entry.map(|u| u.name),
        label: user.to_owned(),
    })
}

/// Drops root for `server.user`, refuses to keep running as root unless allowed, or does nothing when not root.
/// Must run before any other thread is started (see the module documentation).
pub(crate) fn drop_privileges(config: &Config) -> Result<RunningAs, Error> {
    if !nix::unistd::geteuid().is_root() {
        if let Some(user) = &config.user {
            let me = RunningAs::current();
            match resolve(user, config.group.as_deref()) {
                Ok(t) if t.uid == me.uid => {}
                Ok(_) => tracing::warn!(
                    configured = %user,
                    running_as = %me,
                    "server.user is set but edgepop was not started as root, so it cannot switch; continuing as {me}"
                ),
                Err(e) => tracing::warn!(
                    configured = %user,
                    running_as = %me,
                    error = %crate::error_chain(&e),
                    "server.user is set but edgepop was not started as root; continuing as {me}"
                ),
            }
        }
        return Ok(RunningAs::current());
    }
    let Some(user) = &config.user else {
        if config.allow_root {
            tracing::warn!("running as root (server.allow-root = true)");
            return Ok(RunningAs::current());
        }
        return Err(Error::RefuseRoot);
    };
    let target = resolve(user, config.group.as_deref())?;
    if target.uid.is_root() {
        if config.allow_root {
            tracing::warn!(user = %user, "server.user is root; running as root (server.allow-root = true)");
            return Ok(RunningAs::current());
        }
        return Err(Error::RefuseRoot);
    }
    switch(&target)?;
    verify(&target)?;
    keep_proc_readable();
    let now = RunningAs::current();
    tracing::info!(user = %now, uid = %now.uid, gid = %now.gid, "dropped root privileges");
    Ok(now)
}

fn switch(t: &Target) -> Result<(), Error> {
    let failed = |step: &str, e: Errno| Error::Privileges {
        what: format!("user {} ({step})", t.label),
        source: e.into(),
    };
    let groups = match &t.passwd_name {
        Some(name) => match CString::new(name.as_str()) {
            Ok(c) => nix::unistd::initgroups(&c, t.gid),
            Err(_) => Err(Errno::EINVAL),
        },
        None => nix::unistd::setgroups(&[t.gid]),
    };
    groups.map_err(|e| failed("supplementary groups", e))?;
    nix::unistd::setgid(t.gid).map_err(|e| failed("setgid", e))?;
    nix::unistd::setuid(t.uid).map_err(|e| failed("setuid", e))?;
    Ok(())
}

/// Refuses to continue unless the switch fully took and root cannot be regained.
fn verify(t: &Target) -> Result<(), Error> {
    use nix::unistd::{getegid, geteuid, getgid, getuid};
    let still = |why: &str| Error::Privileges {
        what: format!("user {}", t.label),
        source: io::Error::other(why.to_owned()),
    };
    if getuid() != t.uid || geteuid() != t.uid || getgid() != t.gid || getegid() != t.gid {
        return Err(still("the process ids did not change as requested"));
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(still("root could still be regained after setuid"));
    }
    Ok(())
}

/// Changing credentials clears the process's "dumpable" flag, which hands `/proc/self/*` to root: edgepop could then
/// no longer read its own `/proc/self/fd` (`process_open_fds`). Setting it back leaves the process exactly as a
/// process started directly as that user (which the old `runas` helper produced, as `execve` resets the flag):
/// everything edgepop holds (keys, the admin token) it read as that user, after the drop.
fn keep_proc_readable() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(true) {
        tracing::warn!(error = %e, "cannot set the dumpable flag; process_open_fds will be missing");
    }
}

/// Whether `server.user` exists on this machine (for `edgepop check`, which may run on a build machine).
pub(crate) fn check_user(config: &Config) -> Option<String> {
    let user = config.user.as_deref()?;
    resolve(user, config.group.as_deref())
        .err()
        .map(|e| format!("warning: {} on this machine", crate::error_chain(&e)))
}

/// Checks, as the current user, the paths edgepop is about to open. Runs after [`drop_privileges`].
pub(crate) fn check_access(config: &Config, user: &RunningAs) -> Result<(), Error> {
    if let Some(disk) = config.cache.as_ref().and_then(|c| c.disk.as_ref()) {
        writable_dir(&disk.path).map_err(|source| Error::Io {
            what: format!(
                "cache directory {} is not writable by user {user}",
                disk.path.display()
            ),
            source,
        })?;
    }
    if let (Some(path), false) = (
        &config.access_log.path,
        config.access_log.format == AccessLogFormat::Off,
    ) {
        writable_file(path).map_err(|source| Error::Io {
            what: format!(
                "access log {} is not writable by user {user}",
                path.display()
            ),
            source,
        })?;
    }
    if let Err(e) = nix::unistd::access(&config.path, AccessFlags::R_OK) {
        tracing::warn!(
            path = %config.path.display(),
            error = %e,
            "configuration file is not readable by user {user}; SIGHUP reloads will fail until it is"
        );
    }
    if config.listeners.iter().any(|l| l.tls) {
        let dir = &config.tls.certs_dir;
        match nix::unistd::access(dir, AccessFlags::R_OK | AccessFlags::X_OK) {
            // A missing directory is reported by the certificate store (vault-agent may create it later).
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "certificates directory is not readable by user {user}; TLS handshakes fail until it is"
            ),
        }
        // Whoever can write there can swap in their own key for any domain (issue 10).
        if let Some(open) = writable_by_others(dir) {
            if config.tls.refuse_insecure_certs_dir {
                return Err(Error::Io {
                    what: format!(
                        "{} is writable by others (tls.certs-dir-insecure = \"refuse\")",
                        open.display()
                    ),
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                });
            }
            tracing::warn!(
                dir = %open.display(),
                "certificates directory is writable by others: anyone on this machine can replace a key; \
                 chmod o-w it (tls.certs-dir-insecure = \"refuse\" makes this fatal)"
            );
        }
    }
    Ok(())
}

/// The certs directory, or the first domain directory in it, that others may write to (mode `o+w`).
fn writable_by_others(dir: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o002 != 0);
    if open(dir) {
        return Some(dir.to_owned());
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && open(p))
}

/// A directory edgepop may have to create: it must be usable if it exists, else its nearest existing ancestor
/// must let us create it.
fn writable_dir(path: &Path) -> io::Result<()> {
    for p in path.ancestors() {
        if p.as_os_str().is_empty() {
            break;
        }
        match nix::unistd::access(p, AccessFlags::F_OK) {
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
            Ok(()) => {
                let need = if p == path {
                    AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK
                } else {
                    AccessFlags::W_OK | AccessFlags::X_OK
                };
                return nix::unistd::access(p, need).map_err(io::Error::from);
            }
        }
    }
    Ok(())
}

/// A file opened for appending (created if missing).
fn writable_file(path: &Path) -> io::Result<()> {
    match nix::unistd::access(path, AccessFlags::F_OK) {
        Ok(()) => nix::unistd::access(path, AccessFlags::W_OK).map_err(io::Error::from),
        Err(Errno::ENOENT) => match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => writable_dir(dir),
            _ => Ok(()),
        },
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str) -> Result<Config, crate::ConfigErrors> {
        Config::parse(
            "edgepop.toml",
            &format!(
                "[server]\n{server}\n[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n"
            ),
        )
    }

    #[test]
    fn user_group_and_allow_root_are_parsed_and_validated() {
        let c = config("user = \"edgepop\"\ngroup = \"1000\"\nallow-root = true").unwrap();
        assert_eq!(c.user.as_deref(), Some("edgepop"));
        assert_eq!(c.group.as_deref(), Some("1000"));
        assert!(c.allow_root);

        let c = config("").unwrap();
        assert_eq!((c.user, c.group, c.allow_root), (None, None, false));

        for (server, want) in [
            (
                "user = \"\"",
                "edgepop.toml:2:8: server.user: \"\" is not a user or group name",
            ),
            (
                "user = \"a b\"",
                "edgepop.toml:2:8: server.user: \"a b\" is not",
            ),
            (
                "user = \"x\"\ngroup = \"-g\"",
                "edgepop.toml:3:9: server.group: \"-g\" is not",
            ),
            (
                "group = \"staff\"",
                "edgepop.toml:2:9: server.group: is set without server.user",
            ),
        ] {
            let err = config(server).unwrap_err().to_string();
            assert!(err.starts_with(want), "{server}: {err}");
        }
    }

    #[test]
    fn resolve_by_name_and_by_id() {
        let root = resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (Uid::from_raw(0), Gid::from_raw(0)));
        assert_eq!(root.passwd_name.as_deref(), Some("root"));
        let by_id = resolve("0", Some("0")).unwrap();
        assert_eq!(by_id.uid, Uid::from_raw(0));
        assert_eq!(by_id.passwd_name.as_deref(), Some("root"));
        // A uid without an entry works only with an explicit group.
        let t = resolve("4242421", Some("4242421")).unwrap();
        assert_eq!(
            (t.uid.as_raw(), t.gid.as_raw(), t.passwd_name),
            (4_242_421, 4_242_421, None)
        );
        let e = resolve("4242421", None).unwrap_err();
        assert!(crate::error_chain(&e).contains("set server.group"), "{e}");
    }

    #[test]
    fn unknown_user_and_group_are_named() {
        let e = resolve("no-such-user-edgepop", None).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "cannot switch to user \"no-such-user-edgepop\": no such user"
        );
        let e = resolve("root", Some("no-such-group-edgepop")).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "cannot switch to group \"no-such-group-edgepop\": no such group"
        );
    }

    #[test]
    fn not_root_with_no_user_changes_nothing() {
        if nix::unistd::geteuid().is_root() {
            // As root this would refuse (tested end to end in tests/e2e/ops.rs).
            let c = config("").unwrap();
            assert!(matches!(drop_privileges(&c), Err(Error::RefuseRoot)));
            let c = config("allow-root = true").unwrap();
            assert_eq!(drop_privileges(&c).unwrap().uid, Uid::from_raw(0));
            return;
        }
        let c = config("").unwrap();
        let me = drop_privileges(&c).unwrap();
        assert_eq!(me.uid, nix::unistd::getuid());
    }

    #[test]
    fn access_checks_name_the_path_and_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b/cache");
        writable_dir(&inner).unwrap();
        writable_file(&dir.path().join("access.log")).unwrap();
        let me = RunningAs::current();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let c = Config::parse(
            dir.path().join("edgepop.toml"),
            &format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n[cache]\n[cache.disk]\npath = \"{}/sub\"\n",
                file.display()
            ),
        )
        .unwrap();
        // A regular file (mode 0644: no x bit, which even root needs) as a parent: nothing can be created below.
        let e = check_access(&c, &me).unwrap_err();
        let msg = crate::error_chain(&e);
        assert!(
            msg.starts_with(&format!(
                "cache directory {}/sub is not writable by user {me}: ",
                file.display()
            )),
            "{msg}"
        );
    }
}
