//! Command line: `edgepop run`, `edgepop check`, `edgepop demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Exit status for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit status when edgepop could not start for another reason.
const EXIT_START: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "edgepop",
    version,
    about = "Edge reverse proxy: TLS, HTTP/2, caching, PROXY protocol, embedded DNS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run in the foreground until SIGTERM/SIGINT (logs on stderr, access log on stdout by default).
    Run {
        /// The configuration file.
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "/etc/edgepop/edgepop.toml"
        )]
        config: PathBuf,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a configuration file and the certificates it points at, without serving.
    Check {
        /// The configuration file.
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "/etc/edgepop/edgepop.toml"
        )]
        config: PathBuf,
        /// Also show what a reload from RUNNING (the file edgepop runs with) to this file would change, and what
        /// would need a restart.
        #[arg(long, value_name = "RUNNING")]
        diff: Option<PathBuf>,
    },
    /// Try edgepop: a self-signed certificate, a built-in origin on loopback and edgepop in front of it.
    Demo {
        /// HTTPS port on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        https_port: u16,
        /// Plain HTTP port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
    },
}

/// The binary's entry point: installs the TLS provider and logging, then runs the subcommand.
pub fn main() -> ExitCode {
    // One explicit provider for the whole process (ring, as pingora uses); never left to feature unification.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_json } => {
            crate::init_tracing(log_json);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("invalid configuration:\n{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            run(config)
        }
        Command::Check { config, diff } => check(&config, diff.as_deref()),
        Command::Demo {
            https_port,
            http_port,
        } => {
            crate::init_tracing(false);
            match crate::demo::prepare(https_port, http_port) {
                Ok(config) => run(config),
                Err(e) => {
                    eprintln!("demo: {}", crate::error_chain(&*e));
                    ExitCode::from(EXIT_START)
                }
            }
        }
    }
}

fn run(config: Config) -> ExitCode {
    raise_nofile_limit(&config);
    match crate::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(crate::Error::Config(errors)) => {
            eprintln!("invalid configuration:\n{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("edgepop: {}", crate::error_chain(&e));
            ExitCode::from(EXIT_START)
        }
    }
}

/// Raises the soft open-files limit to the hard one: every client connection is a descriptor, and the usual soft
/// default (1024) is below what the listeners' `max-connections` admit. Logs the limit in force.
fn raise_nofile_limit(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open files limit");
            return;
        }
    };
    let wanted: u64 = config
        .listeners
        .iter()
        .map(|l| l.max_connections as u64)
        .sum::<u64>()
        + 256;
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "open files limit is below the listeners' max-connections; raise it (ulimit -n, LimitNOFILE)"
        );
    } else {
        tracing::info!(limit, "open files limit");
    }
}

fn check(path: &std::path::Path, running: Option<&std::path::Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let diff = match running.map(Config::load).transpose() {
        Ok(old) => old.map(|old| crate::reload::Diff::between(&old, &config)),
        Err(errors) => {
            eprintln!("the running configuration is invalid, nothing to compare with:");
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for line in crate::check_certificates(&config) {
        println!("{line}");
    }
    for line in crate::upstream::check_interfaces(&config) {
        println!("{line}");
    }
    if let Some(line) = crate::privdrop::check_user(&config) {
        println!("{line}");
    }
    if let (Some(diff), Some(running)) = (diff, running) {
        if diff.is_empty() {
            println!("no changes against {}", running.display());
        } else {
            println!("changes against {}:", running.display());
            for line in diff.lines() {
                println!("  {line}");
            }
        }
    }
    println!(
        "{}: ok ({} listener(s), {} site(s), {} upstream(s))",
        path.display(),
        config.listeners.len(),
        config.sites.len(),
        config.upstreams.len()
    );
    ExitCode::SUCCESS
}
