//! [`StateFuture`]: the future the point operations return.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::StateResult;

/// The future returned by [`crate::StateBackend::get`], `put`, `delete` and `contains`.
///
/// An in-process backend finishes these calls without waiting, and boxing a future for each
/// of them (what `async-trait` does) costs an allocation per call: measured here, 30-40% of a
/// hot DashMap lookup. So the point operations return this type instead: either a value that
/// is already there ([`StateFuture::ready`], no allocation) or a boxed future
/// ([`StateFuture::boxed`], for backends that do I/O). Callers just `.await` it.
///
/// ```
/// use state_core::{StateFuture, StateResult};
///
/// fn answer<'a>(ready: bool) -> StateFuture<'a, u32> {
///     if ready {
///         StateFuture::ready(Ok(42))
///     } else {
///         StateFuture::boxed(async { Ok(42) })
///     }
/// }
/// # futures::executor::block_on(async {
/// assert_eq!(answer(true).await.unwrap(), 42);
/// assert_eq!(answer(false).await.unwrap(), 42);
/// # });
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct StateFuture<'a, T> {
    inner: Inner<'a, T>,
}

enum Inner<'a, T> {
    Ready(Option<StateResult<T>>),
    Boxed(Pin<Box<dyn Future<Output = StateResult<T>> + Send + 'a>>),
}

impl<'a, T> StateFuture<'a, T> {
    /// A future that resolves at once to `result`, without allocating.
    #[inline]
    pub fn ready(result: StateResult<T>) -> Self {
        Self {
            inner: Inner::Ready(Some(result)),
        }
    }

    /// Boxes `future`: for operations that wait on I/O.
    #[inline]
    pub fn boxed(future: impl Future<Output = StateResult<T>> + Send + 'a) -> Self {
        Self {
            inner: Inner::Boxed(Box::pin(future)),
        }
    }
}

// The ready value is moved out through `&mut`, never pinned; the boxed future is pinned on
// the heap. Neither needs `Self` to stay put.
impl<T> Unpin for StateFuture<'_, T> {}

impl<T> Future for StateFuture<'_, T> {
    type Output = StateResult<T>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Inner::Ready(result) => {
                Poll::Ready(result.take().expect("StateFuture polled after completion"))
            }
            Inner::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for StateFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Ready(_) => "StateFuture::Ready",
            Inner::Boxed(_) => "StateFuture::Boxed",
        })
    }
}
