//! The portable checkpoint format: export from one backend, restore into any other.
//!
//! A checkpoint is a stream, so a state of any size is written and read with bounded memory:
//!
//! ```text
//! header   magic "STATECKP" (8) | version u16 LE | flags u16 LE (0) | reserved u32 (0)
//!          | created_unix_ms u64 LE                                           = 24 bytes
//! record   tag 0x01 | key_len u32 LE | value_len u64 LE | ttl_ms u64 LE (0 = no expiry)
//!          | key | value
//! trailer  tag 0xFF | record_count u64 LE | SHA-256 of every byte before it (32)
//! ```
//!
//! `ttl_ms` is the time left when the entry was written; a restore gives the entry that much
//! time again (time spent between checkpoint and restore is not subtracted). Entries that
//! expire during the checkpoint are left out.
//!
//! A reader verifies lengths as it goes and the checksum at the end. [`restore_file`] reads a
//! file twice: it verifies the whole checksum before it writes anything, so a corrupted or
//! truncated file changes nothing. [`write_file`] writes to a temporary file in the same
//! folder, fsyncs it, renames it over the target and fsyncs the folder, so a crash leaves
//! either the old checkpoint or the new one, never half of one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::{Entry, ErrorKind, StateBackend, StateError, StateResult};

/// The 8 bytes every checkpoint starts with.
pub const MAGIC: [u8; 8] = *b"STATECKP";
/// The format version this crate writes and reads.
pub const VERSION: u16 = 1;

const TAG_ENTRY: u8 = 0x01;
const TAG_END: u8 = 0xFF;
/// Largest key a reader accepts (guards allocations against corrupted lengths).
const MAX_KEY_LEN: u32 = 1 << 20;
/// Largest value a reader accepts.
const MAX_VALUE_LEN: u64 = 1 << 32;
const IO_BUFFER: usize = 256 * 1024;
/// Flush a restore batch at this many entries or bytes.
const RESTORE_BATCH_ENTRIES: usize = 512;
const RESTORE_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// What a checkpoint wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointSummary {
    /// Entries written.
    pub entries: u64,
    /// Bytes written, header and trailer included.
    pub bytes: u64,
}

/// What a restore read and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreSummary {
    /// Entries written into the backend.
    pub entries: u64,
    /// Entries that carried a TTL.
    pub with_ttl: u64,
    /// When the checkpoint was written, as milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

fn corrupted(msg: &'static str) -> StateError {
    StateError::corrupted(msg).with_operation("restore")
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes a checkpoint stream entry by entry.
pub struct CheckpointWriter<W: AsyncWrite + Unpin> {
    out: BufWriter<W>,
    hasher: Sha256,
    entries: u64,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> CheckpointWriter<W> {
    /// Starts a checkpoint on `writer` by writing the header.
    pub async fn new(writer: W) -> StateResult<Self> {
        let mut this = Self {
            out: BufWriter::with_capacity(IO_BUFFER, writer),
            hasher: Sha256::new(),
            entries: 0,
            bytes: 0,
        };
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&unix_ms_now().to_le_bytes());
        this.write(&header).await?;
        Ok(this)
    }

    async fn write(&mut self, bytes: &[u8]) -> StateResult<()> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).await?;
        Ok(())
    }

    /// Appends one entry.
    pub async fn write_entry(&mut self, entry: &Entry) -> StateResult<()> {
        let key_len = u32::try_from(entry.key.len())
            .ok()
            .filter(|len| *len <= MAX_KEY_LEN)
            .ok_or_else(|| StateError::invalid_input("key too long for a checkpoint"))?;
        let value_len = entry.value.len() as u64;
        if value_len > MAX_VALUE_LEN {
            return Err(StateError::invalid_input("value too long for a checkpoint"));
        }
        // A remaining TTL under 1 ms still expires: keep it as 1 ms, never as "no expiry".
        let ttl_ms = entry.ttl.map_or(0, |ttl| (ttl.as_millis() as u64).max(1));
        let mut head = [0u8; 21];
        head[0] = TAG_ENTRY;
        head[1..5].copy_from_slice(&key_len.to_le_bytes());
        head[5..13].copy_from_slice(&value_len.to_le_bytes());
        head[13..21].copy_from_slice(&ttl_ms.to_le_bytes());
        self.write(&head).await?;
        self.write(&entry.key).await?;
        self.write(&entry.value).await?;
        self.entries += 1;
        Ok(())
    }

    /// Writes the trailer (count and checksum), flushes, and returns the writer.
    pub async fn finish(mut self) -> StateResult<(CheckpointSummary, W)> {
        let mut tail = [0u8; 9];
        tail[0] = TAG_END;
        tail[1..9].copy_from_slice(&self.entries.to_le_bytes());
        self.write(&tail).await?;
        let digest = self.hasher.finalize();
        self.out.write_all(&digest).await?;
        self.bytes += digest.len() as u64;
        self.out.flush().await?;
        let summary = CheckpointSummary {
            entries: self.entries,
            bytes: self.bytes,
        };
        Ok((summary, self.out.into_inner()))
    }
}

/// Reads a checkpoint stream entry by entry, verifying it as it goes.
pub struct CheckpointReader<R: AsyncRead + Unpin> {
    input: BufReader<R>,
    hasher: Sha256,
    entries: u64,
    created_unix_ms: u64,
    finished: bool,
}

impl<R: AsyncRead + Unpin> CheckpointReader<R> {
    /// Opens a checkpoint stream and checks its header.
    pub async fn new(reader: R) -> StateResult<Self> {
        let mut this = Self {
            input: BufReader::with_capacity(IO_BUFFER, reader),
            hasher: Sha256::new(),
            entries: 0,
            created_unix_ms: 0,
            finished: false,
        };
        let mut header = [0u8; 24];
        this.read_exact(&mut header).await?;
        if header[..8] != MAGIC {
            return Err(corrupted("not a state checkpoint (bad magic)"));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != VERSION {
            return Err(StateError::new(
                ErrorKind::Corrupted,
                format!(
                    "checkpoint version {version} is not supported (this build reads {VERSION})"
                ),
            )
            .with_operation("restore"));
        }
        this.created_unix_ms = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        Ok(this)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> StateResult<()> {
        match self.input.read_exact(buf).await {
            Ok(_) => {
                self.hasher.update(&*buf);
                Ok(())
            }
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(corrupted("checkpoint is truncated"))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// When the checkpoint was written, in milliseconds since the Unix epoch.
    pub fn created_unix_ms(&self) -> u64 {
        self.created_unix_ms
    }

    /// The next entry, or `None` after the trailer was read and its checksum matched.
    pub async fn next_entry(&mut self) -> StateResult<Option<Entry>> {
        if self.finished {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.read_exact(&mut tag).await?;
        match tag[0] {
            TAG_ENTRY => {
                let mut head = [0u8; 20];
                self.read_exact(&mut head).await?;
                let key_len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
                let value_len = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
                let ttl_ms = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
                if key_len == 0 || key_len > MAX_KEY_LEN || value_len > MAX_VALUE_LEN {
                    return Err(corrupted("checkpoint record has an impossible length"));
                }
                let mut key = BytesMut::zeroed(key_len as usize);
                self.read_exact(&mut key).await?;
                let mut value = BytesMut::zeroed(value_len as usize);
                self.read_exact(&mut value).await?;
                self.entries += 1;
                Ok(Some(Entry {
                    key: key.freeze(),
                    value: value.freeze(),
                    ttl: (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms)),
                }))
            }
            TAG_END => {
                let mut count = [0u8; 8];
                self.read_exact(&mut count).await?;
                let expected = self.hasher.clone().finalize();
                let mut digest = [0u8; 32];
                match self.input.read_exact(&mut digest).await {
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(corrupted("checkpoint is truncated"));
                    }
                    Err(err) => return Err(err.into()),
                }
                if digest[..] != expected[..] {
                    return Err(corrupted("checkpoint checksum does not match"));
                }
                if u64::from_le_bytes(count) != self.entries {
                    return Err(corrupted("checkpoint record count does not match"));
                }
                self.finished = true;
                Ok(None)
            }
            _ => Err(corrupted("checkpoint has an unknown record tag")),
        }
    }
}

/// Writes every entry of `backend` (as [`StateBackend::scan`] yields them) to `writer`.
pub async fn write_from_scan<B: StateBackend + ?Sized>(
    backend: &B,
    writer: &mut (dyn AsyncWrite + Send + Unpin),
) -> StateResult<CheckpointSummary> {
    let mut out = CheckpointWriter::new(writer).await?;
    let mut entries = backend.scan(b"");
    while let Some(entry) = entries.next().await {
        out.write_entry(&entry?).await?;
    }
    let (summary, _) = out.finish().await?;
    Ok(summary)
}

/// Reads a checkpoint from `reader` into `backend`: entries without TTL in `batch_put`s,
/// entries with one through `put_with_ttl`.
///
/// **All or nothing for bad input:** the stream is first copied aside (in memory up to
/// 16 MiB, then into an anonymous temporary file that disappears with the process) and
/// verified completely (structure, record count, SHA-256); a corrupted or truncated
/// checkpoint returns [`ErrorKind::Corrupted`] before the first entry is written. A failure
/// of the backend itself while applying (a lost connection) can leave some entries written;
/// restoring the same checkpoint again converges, since every write is an upsert.
pub async fn restore_into<B: StateBackend + ?Sized>(
    backend: &B,
    reader: &mut (dyn AsyncRead + Send + Unpin),
) -> StateResult<RestoreSummary> {
    let mut spool = Spool::fill(reader).await?;
    verify(spool.reader().await?).await?;
    apply(backend, spool.reader().await?).await
}

/// Writes an already verified checkpoint stream into `backend`.
async fn apply<B: StateBackend + ?Sized>(
    backend: &B,
    reader: impl AsyncRead + Unpin,
) -> StateResult<RestoreSummary> {
    let mut input = CheckpointReader::new(reader).await?;
    let mut summary = RestoreSummary {
        created_unix_ms: input.created_unix_ms(),
        ..RestoreSummary::default()
    };
    let mut batch: Vec<(Bytes, Bytes)> = Vec::new();
    let mut batch_bytes = 0usize;
    while let Some(entry) = input.next_entry().await? {
        summary.entries += 1;
        if let Some(ttl) = entry.ttl {
            summary.with_ttl += 1;
            backend.put_with_ttl(&entry.key, &entry.value, ttl).await?;
            continue;
        }
        batch_bytes += entry.key.len() + entry.value.len();
        batch.push((entry.key, entry.value));
        if batch.len() >= RESTORE_BATCH_ENTRIES || batch_bytes >= RESTORE_BATCH_BYTES {
            flush_batch(backend, &mut batch).await?;
            batch_bytes = 0;
        }
    }
    flush_batch(backend, &mut batch).await?;
    Ok(summary)
}

/// Checkpoints up to this size are verified from memory; larger ones from a temporary file.
const SPOOL_IN_MEMORY: usize = 16 * 1024 * 1024;

/// A copy of a checkpoint stream that can be read twice (verify, then apply).
enum Spool {
    Memory(Vec<u8>),
    File(tokio::fs::File),
}

impl Spool {
    async fn fill(reader: &mut (dyn AsyncRead + Send + Unpin)) -> StateResult<Self> {
        let mut memory = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Self::Memory(memory));
            }
            memory.extend_from_slice(&chunk[..n]);
            if memory.len() > SPOOL_IN_MEMORY {
                break;
            }
        }
        // Unlinked at creation: nothing is left behind, whatever happens to the process.
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(|e| StateError::new(ErrorKind::Io, format!("restore spool: {e}")))??;
        let mut file = tokio::fs::File::from_std(file);
        file.write_all(&memory).await?;
        drop(memory);
        tokio::io::copy(reader, &mut file).await?;
        file.flush().await?;
        Ok(Self::File(file))
    }

    /// The spooled bytes from the start.
    async fn reader(&mut self) -> StateResult<Box<dyn AsyncRead + Send + Unpin + '_>> {
        match self {
            Self::Memory(bytes) => Ok(Box::new(&bytes[..])),
            Self::File(file) => {
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(0)).await?;
                Ok(Box::new(&mut *file))
            }
        }
    }
}

async fn flush_batch<B: StateBackend + ?Sized>(
    backend: &B,
    batch: &mut Vec<(Bytes, Bytes)>,
) -> StateResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let refs: Vec<(&[u8], &[u8])> = batch.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    backend.batch_put(&refs).await?;
    batch.clear();
    Ok(())
}

/// Reads a whole checkpoint and checks its structure and checksum without applying it;
/// returns how many entries it holds.
pub async fn verify<R: AsyncRead + Unpin>(reader: R) -> StateResult<u64> {
    let mut input = CheckpointReader::new(reader).await?;
    let mut entries = 0;
    while input.next_entry().await?.is_some() {
        entries += 1;
    }
    Ok(entries)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    path.with_file_name(format!(".{name}.{}.{nanos}.tmp", std::process::id()))
}

/// Checkpoints `backend` into the file at `path`, atomically: a temporary file in the same
/// folder is written, fsynced and renamed over `path`, then the folder is fsynced.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(backend: &dyn state_core::StateBackend) -> state_core::StateResult<()> {
/// let summary = state_core::checkpoint::write_file(backend, "state.ckpt").await?;
/// println!("{} entries, {} bytes", summary.entries, summary.bytes);
/// # Ok(()) }
/// ```
pub async fn write_file<B: StateBackend + ?Sized>(
    backend: &B,
    path: impl AsRef<Path>,
) -> StateResult<CheckpointSummary> {
    let path = path.as_ref();
    let tmp = temp_path(path);
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        let summary = backend.checkpoint(&mut file).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, path).await?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::File::open(dir).await?.sync_all().await?;
        }
        Ok::<_, StateError>(summary)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Restores the checkpoint file at `path` into `backend`. The file is verified completely
/// (structure and checksum) before the first entry is written.
pub async fn restore_file<B: StateBackend + ?Sized>(
    backend: &B,
    path: impl AsRef<Path>,
) -> StateResult<RestoreSummary> {
    let path = path.as_ref();
    verify(tokio::fs::File::open(path).await?).await?;
    let mut file = tokio::fs::File::open(path).await?;
    // `restore` verifies again (it cannot know its input was a verified file).
    backend.restore(&mut file).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn encode(entries: &[Entry]) -> Vec<u8> {
        let mut w = CheckpointWriter::new(Vec::new()).await.unwrap();
        for e in entries {
            w.write_entry(e).await.unwrap();
        }
        w.finish().await.unwrap().1
    }

    fn entry(key: &'static [u8], value: &'static [u8], ttl: Option<u64>) -> Entry {
        Entry {
            key: Bytes::from_static(key),
            value: Bytes::from_static(value),
            ttl: ttl.map(Duration::from_millis),
        }
    }

    #[tokio::test]
    async fn round_trip_keeps_bytes_and_ttl() {
        let entries = vec![entry(b"\x00\xff", b"", None), entry(b"k", b"v", Some(1500))];
        let data = encode(&entries).await;
        let mut r = CheckpointReader::new(&data[..]).await.unwrap();
        let mut back = Vec::new();
        while let Some(e) = r.next_entry().await.unwrap() {
            back.push(e);
        }
        assert_eq!(back, entries);
    }

    #[tokio::test]
    async fn flipped_byte_fails_the_checksum() {
        let mut data = encode(&[entry(b"key", b"value", None)]).await;
        let at = 24 + 21 + 3; // inside the value
        data[at] ^= 0x01;
        let err = verify(&data[..]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted);
    }

    #[tokio::test]
    async fn truncation_is_detected() {
        let data = encode(&[entry(b"key", b"value", None)]).await;
        for cut in [0, 10, 30, data.len() - 1] {
            let err = verify(&data[..cut]).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupted, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn wrong_version_is_refused() {
        let mut data = encode(&[]).await;
        data[8] = 9;
        let err = verify(&data[..]).await.unwrap_err();
        assert!(err.to_string().contains("version 9"));
    }
}
