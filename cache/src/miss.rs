//! The miss handler: buffers the body up to `max_object_bytes`, then stores it in both tiers.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::Result;
use pingora::cache::key::HashBinary;
use pingora::cache::storage::{HandleMiss, MissFinishType};
use tracing::debug;

use crate::TieredStorage;
use crate::memory::{Entry, ParsedMeta};

pub(crate) struct Miss {
    pub(crate) storage: &'static TieredStorage,
    pub(crate) hash: HashBinary,
    pub(crate) primary: Arc<str>,
    /// The serialized meta, and the same meta parsed.
    pub(crate) meta: (Vec<u8>, Vec<u8>),
    pub(crate) parsed: ParsedMeta,
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) size: u64,
    /// The body outgrew `max_object_bytes`: the buffer was dropped and nothing will be stored.
    pub(crate) too_large: bool,
}

#[async_trait]
impl HandleMiss for Miss {
    /// Never fails: a body over the limit just stops being buffered.
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large || data.is_empty() {
            return Ok(());
        }
        self.size += data.len() as u64;
        if self.size > self.storage.max_object_bytes {
            self.too_large = true;
            self.chunks = Vec::new();
            debug!(
                primary = %self.primary,
                limit = self.storage.max_object_bytes,
                "response body over max_object_bytes, not caching it"
            );
            return Ok(());
        }
        self.chunks.push(data);
        Ok(())
    }

    /// Stores the entry (memory now, disk in the background). Never fails for storage reasons.
    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        if this.too_large {
            return Ok(MissFinishType::Created(0));
        }
        let body = concat(this.chunks, this.size);
        let entry = Arc::new(Entry::from_parts(
            this.meta,
            this.parsed,
            body,
            this.primary,
        ));
        let weight = entry.weight();
        this.storage.store(this.hash, entry);
        Ok(MissFinishType::Created(
            usize::try_from(weight).unwrap_or(usize::MAX),
        ))
    }
}

/// One `Bytes` for the whole body; no copy when it arrived in one chunk.
fn concat(mut chunks: Vec<Bytes>, size: u64) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut body = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
    for chunk in chunks {
        body.extend_from_slice(&chunk);
    }
    body.freeze()
}
