//! A memory-limited cgroup to run edgepop in (the 256 MB machine), and the memory figures to report.
//!
//! cgroup v2 is used when a v2 hierarchy offers the `memory` controller (`/sys/fs/cgroup` or, on a hybrid host,
//! `/sys/fs/cgroup/unified`); otherwise the v1 `memory` hierarchy (`/sys/fs/cgroup/memory`). Creating either needs
//! root; [`MemCgroup::create`] says why it cannot, so the caller can skip visibly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which hierarchy the cgroup lives in (the file names differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Unified hierarchy: `memory.max`, `memory.current`, `memory.peak`, `memory.events`.
    V2,
    /// Legacy `memory` hierarchy: `memory.limit_in_bytes`, `memory.usage_in_bytes`, `memory.max_usage_in_bytes`,
    /// `memory.oom_control`.
    V1,
}

/// A cgroup with a memory limit, removed on drop (once its processes have exited).
#[derive(Debug)]
pub struct MemCgroup {
    path: PathBuf,
    version: CgroupVersion,
}

impl MemCgroup {
    /// Creates `edgepop-test-<pid>-<n>` with `memory.max` (v2) or `memory.limit_in_bytes` (v1) = `limit` bytes.
    /// `Err` says why not (not root, no writable hierarchy with the memory controller).
    pub fn create(limit: u64) -> Result<MemCgroup, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root: cannot create a cgroup".into());
        }
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "edgepop-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut why = Vec::new();
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            match Self::create_v2(Path::new(root), &name, limit).and_then(Self::joinable) {
                Ok(cg) => return Ok(cg),
                Err(e) => why.push(e),
            }
        }
        match Self::create_v1(&name, limit).and_then(Self::joinable) {
            Ok(cg) => Ok(cg),
            Err(e) => {
                why.push(e);
                Err(why.join("; "))
            }
        }
    }

    /// Checks that a process can move itself in, as the edgepop wrapper will (cgroup v2 refuses it in some
    /// container layouts, e.g. when the parent has processes of its own): a short-lived `sh` tries it.
    fn joinable(self) -> Result<MemCgroup, String> {
        let status = std::process::Command::new("sh")
            .args(["-c", r#"echo $$ > "$0""#])
            .arg(self.procs_file())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("running sh: {e}"))?;
        if status.success() {
            Ok(self)
        } else {
            Err(format!(
                "a process cannot join {} ({status})",
                self.path.display()
            ))
        }
    }

    fn create_v2(root: &Path, name: &str, limit: u64) -> Result<MemCgroup, String> {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| format!("{} is not cgroup v2: {e}", root.display()))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!(
                "cgroup v2 at {} has no memory controller (controllers: {:?})",
                root.display(),
                controllers.trim()
            ));
        }
        let subtree = root.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == "memory") {
            std::fs::write(&subtree, "+memory")
                .map_err(|e| format!("enabling +memory in {}: {e}", subtree.display()))?;
        }
        let path = root.join(name);
        std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let cg = MemCgroup {
            path,
            version: CgroupVersion::V2,
        };
        cg.write("memory.max", &limit.to_string())?;
        // No swap: the limit is the machine's RAM.
        let _ = cg.write("memory.swap.max", "0");
        Ok(cg)
    }

    fn create_v1(name: &str, limit: u64) -> Result<MemCgroup, String> {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("memory.limit_in_bytes").exists() {
            return Err(format!(
                "no cgroup v1 memory hierarchy at {}",
                root.display()
            ));
        }
        let path = root.join(name);
        std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let cg = MemCgroup {
            path,
            version: CgroupVersion::V1,
        };
        cg.write("memory.limit_in_bytes", &limit.to_string())?;
        let _ = cg.write("memory.memsw.limit_in_bytes", &limit.to_string());
        let _ = cg.write("memory.swappiness", "0");
        Ok(cg)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// v1 or v2.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The `cgroup.procs` file: write a pid into it to move that process in.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Memory charged now (`memory.current` / `memory.usage_in_bytes`), bytes.
    pub fn current(&self) -> u64 {
        self.read_u64(match self.version {
            CgroupVersion::V2 => "memory.current",
            CgroupVersion::V1 => "memory.usage_in_bytes",
        })
    }

    /// Peak memory charged (`memory.peak`, kernel 5.19+ / `memory.max_usage_in_bytes`), bytes; 0 if unknown.
    pub fn peak(&self) -> u64 {
        self.read_u64(match self.version {
            CgroupVersion::V2 => "memory.peak",
            CgroupVersion::V1 => "memory.max_usage_in_bytes",
        })
    }

    /// OOM kills in the cgroup (`oom_kill` in `memory.events` / `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            CgroupVersion::V2 => "memory.events",
            CgroupVersion::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(self.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn read_u64(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let p = self.path.join(file);
        std::fs::write(&p, value).map_err(|e| format!("writing {value} to {}: {e}", p.display()))
    }

    /// Removes the cgroup, waiting up to 5 s for its processes to be gone.
    pub fn remove(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("rmdir {}: {e}", self.path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: {e}");
        }
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to the hard limit; as root, the hard limit
/// too). Processes spawned afterwards (edgepop) inherit it. Returns the soft limit now in force.
pub fn raise_nofile_limit(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    let hard = if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        want
    } else {
        hard
    };
    let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(s, _)| s)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB; 0 if unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
