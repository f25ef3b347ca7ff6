//! Upstream name resolution for edgepop, in place of a local unbound: [`Resolver::resolve`] turns
//! an upstream host and port into `SocketAddr`s via hickory (nameservers from the settings or
//! `/etc/resolv.conf`), with TTL clamps, a warm in-memory table refreshed ahead of expiry so
//! requests do not wait on DNS, negative caching and serve-stale (RFC 8767).
//! It is not a DNS server, and it does not choose which address to connect to (the proxy's
//! load balancer does). `test_dns` (feature `test-util`) is a tiny authoritative server for tests.
//!
//! ```
//! use edgepop_resolver::{Resolver, ResolverSettings};
//!
//! let resolver = Resolver::new(ResolverSettings {
//!     nameservers: vec!["127.0.0.1:53".parse()?],
//!     ..Default::default()
//! })?;
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! // IP literals never reach DNS; names are resolved the same way.
//! let addrs = rt.block_on(resolver.resolve("[2001:db8::1]", 443))?;
//! assert_eq!(&addrs[..], &["[2001:db8::1]:443".parse()?]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod entry;
mod error;
mod metrics;
mod resolver;
mod settings;
#[cfg(feature = "test-util")]
pub mod test_dns;

pub use error::ResolveError;
pub use resolver::Resolver;
pub use settings::{IpStrategy, ResolverSettings};
