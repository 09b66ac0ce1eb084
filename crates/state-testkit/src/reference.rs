//! A deliberately simple, obviously correct backend: the oracle the suite is checked against
//! and the "other kind" that cross-backend checkpoint cases restore into.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use state_core::{
    Capabilities, Limits, OpKind, StateBackend, StateError, StateFuture, StateResult, StatsRecorder,
};

#[derive(Clone)]
struct Slot {
    value: Bytes,
    expires: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// A `Mutex<BTreeMap>` backend with TTL and atomic operations, written for clarity, not speed.
#[derive(Default)]
pub struct ReferenceBackend {
    map: Mutex<BTreeMap<Bytes, Slot>>,
    limits: Limits,
    stats: StatsRecorder,
}

impl std::fmt::Debug for ReferenceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceBackend").finish_non_exhaustive()
    }
}

impl ReferenceBackend {
    /// An empty backend with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_map<R>(&self, f: impl FnOnce(&mut BTreeMap<Bytes, Slot>, Instant) -> R) -> R {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut map, Instant::now())
    }

    fn live_value(map: &BTreeMap<Bytes, Slot>, key: &[u8], now: Instant) -> Option<Bytes> {
        map.get(key)
            .filter(|slot| slot.live(now))
            .map(|slot| slot.value.clone())
    }
}

impl ReferenceBackend {
    fn get_now(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.limits.check_key(key)?;
        let timer = self.stats.start();
        let value = self.with_map(|map, now| Self::live_value(map, key, now));
        self.stats.record_get(timer, value.is_some());
        Ok(value)
    }

    fn put_now(&self, key: &[u8], value: &[u8]) -> StateResult<()> {
        self.limits.check_entry(key, value)?;
        let timer = self.stats.start();
        self.stats.record(timer, OpKind::Put, 1);
        self.with_map(|map, _| {
            map.insert(
                Bytes::copy_from_slice(key),
                Slot {
                    value: Bytes::copy_from_slice(value),
                    expires: None,
                },
            );
        });
        Ok(())
    }

    fn delete_now(&self, key: &[u8]) -> StateResult<bool> {
        self.limits.check_key(key)?;
        Ok(self.with_map(|map, now| map.remove(key).is_some_and(|slot| slot.live(now))))
    }

    fn contains_now(&self, key: &[u8]) -> StateResult<bool> {
        Ok(self.get_now(key)?.is_some())
    }
}

#[async_trait]
impl StateBackend for ReferenceBackend {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::ready(self.get_now(key))
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::ready(self.put_now(key, value))
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::ready(self.delete_now(key))
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.limits.check_prefix(prefix)?;
        Ok(self.with_map(|map, now| {
            map.iter()
                .filter(|(k, slot)| k.starts_with(prefix) && slot.live(now))
                .map(|(k, _)| k.clone())
                .collect()
        }))
    }

    async fn clear(&self) -> StateResult<()> {
        self.with_map(|map, _| map.clear());
        Ok(())
    }

    async fn count(&self) -> StateResult<usize> {
        Ok(self.with_map(|map, now| map.values().filter(|slot| slot.live(now)).count()))
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::ready(self.contains_now(key))
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.ttl = true;
        caps.atomic = true;
        caps.atomic_batch = true;
        caps.native_batch = true;
        caps.limits = self.limits;
        caps
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.limits.check_entries(entries)?;
        self.with_map(|map, _| {
            for (key, value) in entries {
                map.insert(
                    Bytes::copy_from_slice(key),
                    Slot {
                        value: Bytes::copy_from_slice(value),
                        expires: None,
                    },
                );
            }
        });
        Ok(())
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.limits.check_entry(key, value)?;
        Limits::check_ttl(ttl)?;
        self.with_map(|map, now| {
            let expires = Limits::deadline_after(now, ttl)?;
            map.insert(
                Bytes::copy_from_slice(key),
                Slot {
                    value: Bytes::copy_from_slice(value),
                    expires: Some(expires),
                },
            );
            Ok(())
        })
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.limits.check_key(key)?;
        Ok(self.with_map(|map, now| {
            map.get(key)
                .filter(|slot| slot.live(now))
                .and_then(|slot| slot.expires)
                .map(|at| at.saturating_duration_since(now))
        }))
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        self.limits.check_swap(key, new)?;
        Ok(self.with_map(|map, now| {
            let current = Self::live_value(map, key, now);
            if current.as_deref() != expected {
                return false;
            }
            match new {
                Some(new) => {
                    map.insert(
                        Bytes::copy_from_slice(key),
                        Slot {
                            value: Bytes::copy_from_slice(new),
                            expires: None,
                        },
                    );
                }
                None => {
                    map.remove(key);
                }
            }
            true
        }))
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        self.limits.check_entry(key, value)?;
        Limits::check_optional_ttl(ttl)?;
        self.with_map(|map, now| {
            if Self::live_value(map, key, now).is_some() {
                return Ok(false);
            }
            let expires = ttl
                .map(|ttl| Limits::deadline_after(now, ttl))
                .transpose()?;
            map.insert(
                Bytes::copy_from_slice(key),
                Slot {
                    value: Bytes::copy_from_slice(value),
                    expires,
                },
            );
            Ok(true)
        })
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.limits.check_key(key)?;
        Ok(self.with_map(|map, now| {
            map.remove(key)
                .filter(|slot| slot.live(now))
                .map(|slot| slot.value)
        }))
    }

    async fn stats(&self) -> state_core::StateStats {
        self.stats.snapshot()
    }

    async fn memory_usage(&self) -> StateResult<u64> {
        Err(StateError::unsupported("memory_usage"))
    }
}
