//! Keeping L1 caches of several instances coherent: an [`InvalidationBus`] carries "key K
//! changed" messages between them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use state_core::StateResult;
use tokio::sync::mpsc;

use crate::cache::Shared;

/// The channel name cache instances use on the bus's backend.
pub const CHANNEL: &str = "state-tiered:invalidate";

/// A broadcast channel between cache instances: Redis pub/sub or PostgreSQL
/// `LISTEN`/`NOTIFY` (both implemented here), or anything that delivers every published
/// message to every current subscriber.
#[async_trait]
pub trait InvalidationBus: Send + Sync + fmt::Debug {
    /// Sends `message` to every subscriber, this instance's own included.
    async fn publish(&self, message: &[u8]) -> StateResult<()>;

    /// Largest message `publish` accepts, in bytes.
    fn max_message(&self) -> usize;

    /// A stream of every message published from now on. An `Err` item means messages may
    /// have been lost (the cache then forgets everything).
    async fn subscribe(&self) -> StateResult<BoxStream<'static, StateResult<Bytes>>>;
}

#[async_trait]
impl InvalidationBus for state_redis::RedisStateBackend {
    async fn publish(&self, message: &[u8]) -> StateResult<()> {
        state_redis::RedisStateBackend::publish(self, CHANNEL, message)
            .await
            .map(|_| ())
    }

    fn max_message(&self) -> usize {
        64 * 1024
    }

    async fn subscribe(&self) -> StateResult<BoxStream<'static, StateResult<Bytes>>> {
        Ok(state_redis::RedisStateBackend::subscribe(self, CHANNEL)
            .await?
            .boxed())
    }
}

#[async_trait]
impl InvalidationBus for state_postgres::PostgresStateBackend {
    async fn publish(&self, message: &[u8]) -> StateResult<()> {
        state_postgres::PostgresStateBackend::publish(self, "l1", message).await
    }

    fn max_message(&self) -> usize {
        state_postgres::MAX_MESSAGE_BYTES
    }

    async fn subscribe(&self) -> StateResult<BoxStream<'static, StateResult<Bytes>>> {
        Ok(state_postgres::PostgresStateBackend::subscribe(self, "l1")
            .await?
            .boxed())
    }
}

/// Announcements queued before the queue collapses into one "invalidate everything".
const QUEUE: usize = 65_536;

const KIND_KEYS: u8 = b'K';
const KIND_ALL: u8 = b'A';
const KIND_PING: u8 = b'P';
const HEADER: usize = 9;

/// What a local write asks the other instances to drop.
enum Note {
    Key(Bytes),
    All,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    publish_errors: AtomicU64,
    bus_errors: AtomicU64,
    degraded_periods: AtomicU64,
    /// Set when an announcement could not be delivered (publish failed or the queue
    /// overflowed): an "invalidate everything" message is owed to the other instances.
    owe_all: AtomicBool,
    /// Milliseconds since `epoch` when this instance last heard its own heartbeat.
    last_pong_ms: AtomicU64,
    subscribed: AtomicBool,
}

/// The running coherence tasks of one cache; stopped when dropped.
pub(crate) struct Coherence {
    notes: mpsc::Sender<Note>,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Coherence {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn encode_header(out: &mut BytesMut, kind: u8, instance: u64) {
    out.put_u8(kind);
    out.put_u64(instance);
}

/// Decodes `K` messages into keys; `None` for a malformed message.
fn decode_keys(body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut keys = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let key = rest.get(2..2 + len)?;
        keys.push(key);
        rest = &rest[2 + len..];
    }
    Some(keys)
}

impl Coherence {
    /// Subscribes (failing if the bus cannot be reached) and starts the publisher and
    /// listener tasks.
    pub(crate) async fn start(
        bus: Arc<dyn InvalidationBus>,
        shared: Arc<Shared>,
        heartbeat: Duration,
    ) -> StateResult<Self> {
        let instance: u64 = rand::random();
        let counters = Arc::new(Counters::default());
        let epoch = Instant::now();
        let first = bus.subscribe().await?;
        counters.subscribed.store(true, Ordering::Release);
        let (notes, rx) = mpsc::channel(QUEUE);
        let listener = tokio::spawn(listen(
            Arc::clone(&bus),
            first,
            Arc::clone(&shared),
            Arc::clone(&counters),
            instance,
            epoch,
        ));
        counters
            .last_pong_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Release);
        // Three tasks that never wait on one another: announcements, heartbeats, and the
        // watchdog, which awaits nothing but its own timer (a hung bus cannot stall it).
        let pinger = tokio::spawn(ping_loop(Arc::clone(&bus), instance, heartbeat));
        let watchdog = tokio::spawn(watchdog(
            Arc::clone(&shared),
            Arc::clone(&counters),
            heartbeat,
            epoch,
        ));
        let publisher = tokio::spawn(publish_loop(
            bus,
            rx,
            Arc::clone(&counters),
            instance,
            heartbeat,
        ));
        Ok(Self {
            notes,
            counters,
            tasks: vec![
                listener.abort_handle(),
                publisher.abort_handle(),
                pinger.abort_handle(),
                watchdog.abort_handle(),
            ],
        })
    }

    /// Announces a local write of `key`. A full queue (the bus cannot keep up) turns into
    /// one "invalidate everything" announcement instead of unbounded memory.
    pub(crate) fn announce(&self, key: &[u8]) {
        if self
            .notes
            .try_send(Note::Key(Bytes::copy_from_slice(key)))
            .is_err()
        {
            self.counters.owe_all.store(true, Ordering::Release);
        }
    }

    /// Announces a local write of unknown keys (clear, prefix delete, restore).
    pub(crate) fn announce_all(&self) {
        if self.notes.try_send(Note::All).is_err() {
            self.counters.owe_all.store(true, Ordering::Release);
        }
    }

    pub(crate) fn report(&self, d: &mut BTreeMap<String, f64>) {
        let c = &self.counters;
        for (name, value) in [
            ("invalidations_sent", &c.sent),
            ("invalidations_received", &c.received),
            ("invalidation_publish_errors", &c.publish_errors),
            ("invalidation_bus_errors", &c.bus_errors),
            ("degraded_periods", &c.degraded_periods),
        ] {
            d.insert(name.into(), value.load(Ordering::Relaxed) as f64);
        }
    }
}

fn degrade(shared: &Shared, counters: &Counters, why: &str) {
    // Messages may be lost from now on: cache briefly (flag first, so a load finishing in
    // between gets the short lifetime), then forget everything.
    let was = shared.degraded.swap(true, Ordering::AcqRel);
    shared.invalidate_all();
    if !was {
        counters.degraded_periods.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            reason = why,
            "state-tiered: invalidation bus down; L1 entries now live at most the degraded TTL"
        );
    }
}

fn recover(shared: &Shared) {
    if shared.degraded.swap(false, Ordering::AcqRel) {
        // Whatever was cached while messages could be lost is dropped once more.
        shared.invalidate_all();
        tracing::info!("state-tiered: invalidation bus back; L1 coherent again");
    }
}

async fn listen(
    bus: Arc<dyn InvalidationBus>,
    first: BoxStream<'static, StateResult<Bytes>>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    instance: u64,
    epoch: Instant,
) {
    let mut stream = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut messages = match stream.take() {
            Some(s) => s,
            None => match bus.subscribe().await {
                Ok(s) => {
                    backoff = Duration::from_millis(50);
                    s
                }
                Err(err) => {
                    counters.bus_errors.fetch_add(1, Ordering::Relaxed);
                    degrade(&shared, &counters, &err.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        while let Some(item) = messages.next().await {
            match item {
                Ok(message) => {
                    handle(&message, &shared, &counters, instance, epoch).await;
                }
                Err(err) => {
                    counters.bus_errors.fetch_add(1, Ordering::Relaxed);
                    degrade(&shared, &counters, &err.to_string());
                }
            }
        }
        counters.bus_errors.fetch_add(1, Ordering::Relaxed);
        degrade(&shared, &counters, "subscription ended");
    }
}

async fn handle(message: &[u8], shared: &Shared, counters: &Counters, me: u64, epoch: Instant) {
    if message.len() < HEADER {
        return;
    }
    let kind = message[0];
    let from = u64::from_be_bytes(message[1..HEADER].try_into().expect("8 bytes"));
    let body = &message[HEADER..];
    match kind {
        KIND_PING if from == me => {
            counters
                .last_pong_ms
                .store(epoch.elapsed().as_millis() as u64, Ordering::Release);
            recover(shared);
        }
        KIND_KEYS if from != me => {
            if let Some(keys) = decode_keys(body) {
                counters
                    .received
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
                for key in keys {
                    shared.invalidate_remote(key).await;
                }
            } else {
                shared.invalidate_all();
            }
        }
        KIND_ALL if from != me => {
            counters.received.fetch_add(1, Ordering::Relaxed);
            shared.invalidate_all();
        }
        _ => {}
    }
}

async fn send(bus: &dyn InvalidationBus, message: &[u8], counters: &Counters) {
    // A lost announcement leaves other instances stale: retry, then owe them an
    // "invalidate everything" as soon as the bus takes messages again.
    for attempt in 0..3u32 {
        match bus.publish(message).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, attempt, "state-tiered: invalidation publish failed");
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    counters.publish_errors.fetch_add(1, Ordering::Relaxed);
    counters.owe_all.store(true, Ordering::Release);
}

/// Sends the owed "invalidate everything", if any; it stays owed when the bus refuses it.
async fn settle_debt(bus: &dyn InvalidationBus, counters: &Counters, instance: u64) {
    if counters.owe_all.swap(false, Ordering::AcqRel) {
        let mut m = BytesMut::with_capacity(HEADER);
        encode_header(&mut m, KIND_ALL, instance);
        if bus.publish(&m).await.is_err() {
            counters.owe_all.store(true, Ordering::Release);
        } else {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Publishes this instance's heartbeat every `heartbeat`; each ping may take at most one
/// heartbeat (a hung bus delays nothing else). A ping that fails or is not heard back is
/// what [`watchdog`] notices.
async fn ping_loop(bus: Arc<dyn InvalidationBus>, instance: u64, heartbeat: Duration) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = BytesMut::with_capacity(HEADER);
    encode_header(&mut ping, KIND_PING, instance);
    loop {
        tick.tick().await;
        let _ = tokio::time::timeout(heartbeat, bus.publish(&ping)).await;
    }
}

/// Checks every half heartbeat that this instance heard its own heartbeat within the last
/// three; otherwise the bus may be losing messages: degrade (forget everything, cache for
/// the degraded TTL only). Awaits nothing but its timer, so a bus that hangs or dies is
/// noticed within 3.5 heartbeats.
async fn watchdog(
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    heartbeat: Duration,
    epoch: Instant,
) {
    let limit = 3 * heartbeat.as_millis() as u64;
    loop {
        tokio::time::sleep(heartbeat / 2).await;
        let silent = (epoch.elapsed().as_millis() as u64)
            .saturating_sub(counters.last_pong_ms.load(Ordering::Acquire));
        if silent > limit {
            degrade(&shared, &counters, "own heartbeat not heard back");
        }
    }
}

async fn publish_loop(
    bus: Arc<dyn InvalidationBus>,
    mut rx: mpsc::Receiver<Note>,
    counters: Arc<Counters>,
    instance: u64,
    heartbeat: Duration,
) {
    let max = bus.max_message().max(HEADER + 2 + 16);
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            note = rx.recv() => match note {
                Some(note) => note,
                None => return,
            },
            _ = tick.tick() => {
                settle_debt(&*bus, &counters, instance).await;
                continue;
            }
        };
        settle_debt(&*bus, &counters, instance).await;
        // Coalesce whatever is queued into as few messages as fit.
        let mut all = false;
        let mut keys: Vec<Bytes> = Vec::new();
        let mut next = Some(first);
        while let Some(note) = next {
            match note {
                Note::All => all = true,
                Note::Key(k) => keys.push(k),
            }
            next = if keys.len() < 4096 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if all {
            let mut m = BytesMut::with_capacity(HEADER);
            encode_header(&mut m, KIND_ALL, instance);
            send(&*bus, &m, &counters).await;
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        let mut m = BytesMut::with_capacity(max.min(64 * 1024));
        encode_header(&mut m, KIND_KEYS, instance);
        for key in keys {
            if key.len() + 2 + HEADER > max || key.len() > usize::from(u16::MAX) {
                // Cannot be carried: make everyone forget everything instead.
                let mut a = BytesMut::with_capacity(HEADER);
                encode_header(&mut a, KIND_ALL, instance);
                send(&*bus, &a, &counters).await;
                continue;
            }
            if m.len() + 2 + key.len() > max {
                send(&*bus, &m, &counters).await;
                m.clear();
                encode_header(&mut m, KIND_KEYS, instance);
            }
            m.put_u16(key.len() as u16);
            m.put_slice(&key);
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        if m.len() > HEADER {
            send(&*bus, &m, &counters).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_message_format() {
        let mut m = BytesMut::new();
        encode_header(&mut m, KIND_KEYS, 7);
        for key in [&b"a"[..], b"", b"\xff\x00key"] {
            m.put_u16(key.len() as u16);
            m.put_slice(key);
        }
        let keys = decode_keys(&m[HEADER..]).unwrap();
        assert_eq!(keys, vec![&b"a"[..], b"", b"\xff\x00key"]);
        assert_eq!(decode_keys(&[0, 5, b'x']), None);
    }
}
