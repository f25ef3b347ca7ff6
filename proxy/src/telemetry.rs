//! Logging setup: `tracing` to stderr (the access log has its own writer), pingora's `log` records bridged in.
//! `RUST_LOG` filters; the default shows edgepop at info and pingora at warn.

use tracing_subscriber::EnvFilter;

/// Filter used when `RUST_LOG` is unset.
pub const DEFAULT_LOG: &str =
    "info,pingora=warn,pingora_core=warn,pingora_proxy=warn,pingora_cache=warn";

/// Installs the global subscriber; `json` selects JSON lines. Safe to call more than once (later calls are no-ops).
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: under process-compose or Fly, stderr is a pipe and escape codes clutter the logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // `try_init` also installs the `log` → `tracing` bridge for pingora's records.
    let _ = result;
}
