//! Publish/subscribe on the backend's namespace (the tiered cache's invalidation channel).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use state_core::{ErrorKind, StateError, StateResult};
use tokio::sync::broadcast::error::RecvError;

use crate::error::map_fred;

/// Messages a subscriber buffers before a slow reader starts losing them (reported as a
/// `lagged` error item, never silently).
pub(crate) const SUBSCRIBER_BUFFER: usize = 4096;

/// A stream of the payloads published on one channel, from
/// [`crate::RedisStateBackend::subscribe`].
///
/// Items are `Ok(payload)`, or an `Err` of kind `ConditionNotMatch` when the reader fell behind
/// and messages were dropped (a cache should then invalidate everything it holds). The
/// subscription resubscribes by itself after a reconnect and then yields one retryable
/// `Connection` error: messages published while it was disconnected are lost (Redis pub/sub
/// keeps nothing). Dropping it closes its connection.
pub struct Subscription {
    client: SubscriberClient,
    messages: BoxStream<'static, StateResult<Bytes>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) async fn open(builder: &Builder, channel: String) -> StateResult<Self> {
        let client = builder.build_subscriber_client().map_err(map_fred)?;
        client
            .init()
            .await
            .map_err(|e| map_fred(e).with_operation("subscribe"))?;
        let _resubscriber = client.manage_subscriptions();
        let rx = client.message_rx();
        let reconnects = client.reconnect_rx();
        client
            .subscribe(channel.clone())
            .await
            .map_err(|e| map_fred(e).with_operation("subscribe"))?;
        // A reconnect means messages published meanwhile were lost (Redis keeps none): it is
        // yielded as an error item so readers (caches) can react.
        let lost = futures_util::stream::unfold(reconnects, |mut reconnects| async move {
            match reconnects.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => Some((
                    Err(StateError::new(
                        ErrorKind::Connection,
                        "subscriber reconnected: messages published meanwhile were lost",
                    )
                    .with_retryable(true)),
                    reconnects,
                )),
                Err(RecvError::Closed) => None,
            }
        });
        let messages =
            futures_util::stream::unfold((rx, channel), |(mut rx, channel)| async move {
                loop {
                    match rx.recv().await {
                        Ok(message) if *message.channel == *channel => {
                            let item = message.value.convert::<Bytes>().map_err(map_fred);
                            return Some((item, (rx, channel)));
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(n)) => {
                            let err = StateError::new(
                                ErrorKind::ConditionNotMatch,
                                format!("subscriber fell behind: {n} messages were dropped"),
                            );
                            return Some((Err(err), (rx, channel)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            });
        Ok(Self {
            client,
            messages: Box::pin(futures_util::stream::select(messages, lost)),
        })
    }

    /// Unsubscribes and closes the connection.
    pub async fn close(self) -> StateResult<()> {
        self.client.quit().await.map_err(map_fred)
    }
}

impl Stream for Subscription {
    type Item = StateResult<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.messages.as_mut().poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Closing needs the runtime; without one the connection ends with the process.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}
