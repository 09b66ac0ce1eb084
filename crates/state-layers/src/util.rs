//! Helpers shared by the layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::task::noop_waker_ref;
use state_core::{Entry, ScanStream, StateFuture, StateResult};
use tokio::sync::mpsc;

/// Polls `fut` once without a real waker: an in-process backend's
/// [`StateFuture::ready`] answers at once, so the layer can return its own ready future
/// without boxing. A pending future is handed back; the next poll (with the real waker)
/// registers that waker, so nothing is lost.
#[inline]
pub(crate) fn poll_once<T>(
    mut fut: StateFuture<'_, T>,
) -> Result<StateResult<T>, StateFuture<'_, T>> {
    let mut cx = Context::from_waker(noop_waker_ref());
    match Pin::new(&mut fut).poll(&mut cx) {
        Poll::Ready(result) => Ok(result),
        Poll::Pending => Err(fut),
    }
}

/// Entries buffered between an [`owned_stream`] producer and its consumer.
const STREAM_BUFFER: usize = 256;

/// A stream fed by `producer`, an async block that may own the data (a prefixed key, a
/// routing snapshot) the inner streams it reads borrow. The producer runs inside the
/// consumer's task, on the consumer's polls: nothing is spawned, and a dropped stream drops
/// the producer.
pub(crate) fn owned_stream<'a, F, Fut>(producer: F) -> ScanStream<'a>
where
    F: FnOnce(mpsc::Sender<StateResult<Entry>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'a,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    Box::pin(ChannelStream {
        producer: Some(Box::pin(producer(tx))),
        rx,
    })
}

struct ChannelStream<'a> {
    producer: Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>,
    rx: mpsc::Receiver<StateResult<Entry>>,
}

impl Stream for ChannelStream<'_> {
    type Item = StateResult<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(producer) = self.producer.as_mut()
            && producer.as_mut().poll(cx).is_ready()
        {
            self.producer = None;
        }
        self.rx.poll_recv(cx)
    }
}

/// Joins `prefix` and `key` into one owned key.
#[inline]
pub(crate) fn join(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(key);
    out
}
