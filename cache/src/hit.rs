//! The hit handler: serves one stored body (from either tier) as a single chunk, with seeking.

use std::any::Any;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::storage::HandleHit;
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, Storage};
use pingora::{Error, ErrorType, Result};

use crate::TieredStorage;

/// Which tier served a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Memory,
    Disk,
}

pub(crate) struct Hit {
    pub(crate) storage: &'static TieredStorage,
    pub(crate) hash: HashBinary,
    pub(crate) body: Bytes,
    pub(crate) tier: Tier,
    done: bool,
    start: usize,
    end: usize,
}

impl Hit {
    pub(crate) fn new(
        storage: &'static TieredStorage,
        hash: HashBinary,
        body: Bytes,
        tier: Tier,
    ) -> Self {
        let end = body.len();
        Self {
            storage,
            hash,
            body,
            tier,
            done: false,
            start: 0,
            end,
        }
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        // a zero-copy view of the stored body
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        self.storage.touch(&self.hash);
        tracing::trace!(tier = ?self.tier, "cache hit finished");
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.body.len()),
            );
        }
        self.start = start;
        // an end past the last byte is allowed: serve up to the end
        self.end = end.map_or(self.body.len(), |end| end.min(self.body.len()));
        if self.end < self.start {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek end {} before start {start}", self.end),
            );
        }
        // seeking resets the read, so one handler can serve several ranges
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
