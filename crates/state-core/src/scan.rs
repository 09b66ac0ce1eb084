//! The generic scan used by [`crate::StateBackend::scan`]'s default.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;

use crate::backend::DEFAULT_CHUNK;
use crate::{Entry, ScanStream, StateBackend, StateResult};

pub(crate) fn default_scan<'a, B: StateBackend + ?Sized>(
    backend: &'a B,
    prefix: &'a [u8],
) -> ScanStream<'a> {
    let with_ttl = backend.capabilities().ttl;
    let pages = stream::once(backend.list_keys(prefix))
        .map(move |keys| -> StateResult<Vec<Vec<Bytes>>> {
            Ok(keys?.chunks(DEFAULT_CHUNK).map(<[Bytes]>::to_vec).collect())
        })
        .flat_map(|pages| match pages {
            Ok(pages) => stream::iter(pages.into_iter().map(Ok)).left_stream(),
            Err(err) => stream::iter(std::iter::once(Err(err))).right_stream(),
        });
    let entries = pages.then(move |page| async move {
        let page = page?;
        let refs: Vec<&[u8]> = page.iter().map(AsRef::as_ref).collect();
        let values = backend.batch_get(&refs).await?;
        let mut out = Vec::with_capacity(page.len());
        for (key, value) in page.into_iter().zip(values) {
            if let Some(value) = value {
                let ttl = if with_ttl {
                    backend.ttl(&key).await?
                } else {
                    None
                };
                out.push(Entry { key, value, ttl });
            }
        }
        Ok::<_, crate::StateError>(out)
    });
    Box::pin(entries.flat_map(|page| match page {
        Ok(entries) => stream::iter(entries.into_iter().map(Ok)).left_stream(),
        Err(err) => stream::iter(std::iter::once(Err(err))).right_stream(),
    }))
}
