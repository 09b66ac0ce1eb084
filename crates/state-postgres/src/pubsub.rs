//! `LISTEN`/`NOTIFY` pub/sub, namespaced by table.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use state_core::{ErrorKind, StateError, StateResult};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use crate::PostgresStateBackend;
use crate::error::map_pg;

/// Longest message [`PostgresStateBackend::publish`] accepts: NOTIFY payloads are text of at
/// most 7,999 bytes, and messages travel hex-encoded (any bytes are allowed).
pub const MAX_MESSAGE_BYTES: usize = 3_999;

/// Messages buffered per subscription; beyond it new messages are dropped and the stream
/// yields a `ConditionNotMatch` error before the next message it delivers.
const BUFFER: usize = 4096;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xF)] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Bytes> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let raw = text.as_bytes();
    if raw.len() % 2 != 0 {
        return None;
    }
    raw.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

impl PostgresStateBackend {
    /// The PostgreSQL channel a logical `channel` maps to: `state:<table>:<channel>`, so two
    /// tables never hear each other. At most 63 bytes (PostgreSQL's identifier limit).
    fn channel_name(&self, channel: &str) -> StateResult<String> {
        let name = format!("state:{}:{channel}", self.table());
        if channel.is_empty() || channel.contains('\0') || name.len() > 63 {
            return Err(StateError::invalid_input(format!(
                "invalid channel {channel:?}: non-empty, no NUL, and `state:<table>:<channel>` at most 63 bytes"
            )));
        }
        Ok(name)
    }

    /// Sends `message` to every subscriber of `channel` (this table's namespace) with
    /// `pg_notify`. Delivered when the sending transaction commits (here: at once), at most
    /// once, only to sessions listening at that moment.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> StateResult<()> {
        let name = self.channel_name(channel)?;
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(StateError::invalid_input(format!(
                "message of {} bytes exceeds {MAX_MESSAGE_BYTES} (NOTIFY payload limit)",
                message.len()
            )));
        }
        let payload = hex(message);
        self.timed("publish", async {
            let client = self.primary().await?;
            let stmt = client
                .prepare_cached("SELECT pg_notify($1, $2)")
                .await
                .map_err(map_pg)?;
            client
                .execute(&stmt, &[&name, &payload])
                .await
                .map_err(map_pg)
                .map(|_| ())
        })
        .await
    }

    /// Listens on `channel` on a dedicated connection (not from the pool). The stream yields
    /// each message; when the connection drops it yields one retryable `Connection` error
    /// (messages sent meanwhile are lost: a cache should treat it as "invalidate
    /// everything"), reconnects with backoff (50 ms doubling to 2 s, each attempt bounded by
    /// `connect_timeout`) and listens again.
    ///
    /// A connection that stays open but stops answering (half-open: a dead peer behind a
    /// NAT or proxy, a hung server) counts as dropped once a heartbeat `SELECT 1` goes
    /// unanswered: with [`crate::PostgresConfigBuilder::listen_heartbeat`] at `h` (default
    /// 5 s) it is detected within `2 h` plus a few milliseconds of timer slack (TCP
    /// keepalives, idle after 30 s, cover a peer that is gone entirely).
    pub async fn subscribe(&self, channel: &str) -> StateResult<Subscription> {
        let name = self.channel_name(channel)?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let backend = self.clone();
        let task = tokio::spawn(async move {
            listen_loop(backend, name, tx, ready_tx).await;
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(Subscription { rx, task }),
            Ok(Err(err)) => {
                task.abort();
                Err(err.with_operation("subscribe"))
            }
            Err(_) => Err(StateError::connection("postgres: listener stopped")),
        }
    }
}

async fn listen_loop(
    backend: PostgresStateBackend,
    name: String,
    tx: mpsc::Sender<StateResult<Bytes>>,
    ready: tokio::sync::oneshot::Sender<StateResult<()>>,
) {
    let mut ready = Some(ready);
    let mut lagged = false;
    let mut backoff = Duration::from_millis(50);
    let listen = format!("LISTEN \"{}\"", name.replace('"', "\"\""));
    loop {
        let inner = backend.inner();
        let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
        let connected = async {
            let pg = crate::backend::connection_config(&inner.config, &inner.config.primary);
            let (client, driver) = inner.connector.connect_with_messages(&pg, msg_tx).await?;
            client.batch_execute(&listen).await.map_err(map_pg)?;
            Ok::<_, StateError>((client, driver))
        };
        match tokio::time::timeout(inner.config.connect_timeout, connected).await {
            Ok(Ok((client, driver))) => {
                backoff = Duration::from_millis(50);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                let heartbeat = inner.config.listen_heartbeat;
                let mut ticks = heartbeat.map(|every| {
                    let mut ticks =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticks
                });
                loop {
                    let message = tokio::select! {
                        message = msg_rx.recv() => match message {
                            Some(message) => message,
                            None => break,
                        },
                        () = tick(&mut ticks) => {
                            // A half-open connection (a server or network that stopped
                            // answering without closing it) delivers nothing and reports
                            // nothing: ask, and give up on it when no answer comes in time.
                            let every = heartbeat.unwrap_or(Duration::MAX);
                            match tokio::time::timeout(every, client.simple_query("SELECT 1")).await {
                                Ok(Ok(_)) => continue,
                                Ok(Err(err)) => {
                                    tracing::debug!(channel = %name, error = %err, "state-postgres: listener heartbeat failed");
                                    break;
                                }
                                Err(_) => {
                                    tracing::warn!(channel = %name, "state-postgres: listener heartbeat not answered in time; reconnecting");
                                    break;
                                }
                            }
                        }
                    };
                    if let AsyncMessage::Notification(n) = message
                        && n.channel() == name
                    {
                        let item = unhex(n.payload()).ok_or_else(|| {
                            StateError::new(
                                ErrorKind::Corrupted,
                                "postgres: foreign NOTIFY payload",
                            )
                        });
                        if lagged {
                            // Report the gap before anything that follows it.
                            let gap = StateError::new(
                                ErrorKind::ConditionNotMatch,
                                "postgres: subscriber fell behind; messages were dropped",
                            );
                            match tx.try_send(Err(gap)) {
                                Ok(()) => lagged = false,
                                Err(mpsc::error::TrySendError::Full(_)) => continue,
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                        match tx.try_send(item) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                tracing::warn!(channel = %name, "state-postgres: subscriber lagging; message dropped");
                                lagged = true;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                }
                drop(client);
                driver.abort();
                let lost = StateError::connection(
                    "postgres: listener connection lost; messages may have been missed",
                );
                if tx.send(Err(lost)).await.is_err() {
                    return;
                }
            }
            Ok(Err(err)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(err));
                    return;
                }
            }
            Err(_) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(StateError::timeout(
                        "postgres: listener could not connect in time",
                    )));
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Completes at the next heartbeat tick; never without a heartbeat.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A stream of messages on one channel; see [`PostgresStateBackend::subscribe`]. Dropping it
/// closes its connection.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<StateResult<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for Subscription {
    type Item = StateResult<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_any_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)).unwrap(), Bytes::from(all));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
