//! [`FaultProxy`]: a TCP proxy on a free loopback port that forwards to one upstream server
//! and injects faults on the wire, switchable at runtime.
//!
//! Put it between a client and Redis, a Redis Cluster node or PostgreSQL to see what the
//! client does when a reply is lost, a connection resets or the server goes silent:
//!
//! - [`ProxyFault::Latency`]: every chunk, both ways, is delayed.
//! - [`ProxyFault::ReplyLostThenReset`] (one shot): the next chunk a client sends is forwarded,
//!   the server's reply is swallowed, then the client's connection is reset (`RST`). The
//!   command ran; the client never hears of it.
//! - [`ProxyFault::ReplyLostThenResetOn`] (one shot): the same, for the first client chunk
//!   that contains a byte pattern (a command name: `b"DEL"`, `b"COMMIT"`), so the fault hits
//!   one step of a multi-command operation.
//! - [`ProxyFault::Blackhole`]: client bytes are forwarded, nothing comes back, connections
//!   stay open (a hung server or a one-way partition). A connection that lost replies this
//!   way is reset at its next traffic once the fault ends: its byte stream has a hole a
//!   client could not resynchronise from (a real network never drops bytes mid-stream).
//! - [`ProxyFault::ResetAfterBytes`] (one shot): after that many more bytes (either way), the
//!   connection carrying the last of them is reset; the chunk is cut at the limit.
//!
//! The proxy runs on the tokio runtime it was started on; dropping it stops accepting and
//! closes every proxied connection.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! use state_test_servers::proxy::{FaultProxy, ProxyFault};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // An echo server upstream.
//! let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = upstream.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut s, _)) = upstream.accept().await {
//!         tokio::spawn(async move {
//!             let mut buf = [0u8; 64];
//!             while let Ok(n @ 1..) = s.read(&mut buf).await {
//!                 let _ = s.write_all(&buf[..n]).await;
//!             }
//!         });
//!     }
//! });
//! let proxy = FaultProxy::start(addr).await?;
//! let mut client = tokio::net::TcpStream::connect(proxy.addr()).await?;
//! client.write_all(b"ping").await?;
//! let mut buf = [0u8; 4];
//! client.read_exact(&mut buf).await?;
//! assert_eq!(&buf, b"ping");
//!
//! proxy.set_fault(ProxyFault::ReplyLostThenReset);
//! client.write_all(b"lost").await?;
//! assert!(client.read(&mut buf).await.is_err(), "reset, the echo never arrives");
//! assert_eq!(proxy.fault(), ProxyFault::None, "one shot");
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long the proxy keeps swallowing a server's reply before it resets the client, in
/// [`ProxyFault::ReplyLostThenReset`] (the reply may come in several chunks).
const SWALLOW_FOR: Duration = Duration::from_millis(50);

/// A fault the proxy applies to the traffic it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFault {
    /// Forward everything untouched.
    None,
    /// Delay every chunk, in both directions, by this much before forwarding it.
    Latency(Duration),
    /// One shot: forward the next chunk a client sends, swallow the server's reply, then
    /// reset that client's connection. Afterwards the proxy goes back to [`ProxyFault::None`].
    ReplyLostThenReset,
    /// One shot: like [`ProxyFault::ReplyLostThenReset`], for the first chunk a client sends
    /// that contains this byte pattern; other chunks pass untouched until then.
    ReplyLostThenResetOn(&'static [u8]),
    /// Forward what clients send; forward nothing back; keep every connection open. After the
    /// fault ends, a connection that lost replies is reset at its next traffic.
    Blackhole,
    /// One shot: forward this many more bytes (both directions counted together), then reset
    /// the connection that carried the last of them. Afterwards back to [`ProxyFault::None`].
    ResetAfterBytes(u64),
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    fault: Mutex<ProxyFault>,
    connections: AtomicU64,
    fired: AtomicU64,
}

impl Shared {
    fn fault(&self) -> ProxyFault {
        *self.fault.lock().expect("fault lock")
    }

    /// Takes the one-shot `ReplyLostThenReset[On]`, if armed (and `chunk` matches).
    fn take_reply_lost(&self, chunk: &[u8]) -> bool {
        let mut fault = self.fault.lock().expect("fault lock");
        let hit = match *fault {
            ProxyFault::ReplyLostThenReset => true,
            ProxyFault::ReplyLostThenResetOn(pattern) => {
                !pattern.is_empty() && chunk.windows(pattern.len()).any(|w| w == pattern)
            }
            _ => false,
        };
        if hit {
            *fault = ProxyFault::None;
            self.fired.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    /// Spends `len` bytes of a `ResetAfterBytes` budget: how many may be forwarded, and
    /// whether the connection must be reset after them.
    fn spend(&self, len: usize) -> (usize, bool) {
        let mut fault = self.fault.lock().expect("fault lock");
        match *fault {
            ProxyFault::ResetAfterBytes(left) if (len as u64) >= left => {
                *fault = ProxyFault::None;
                self.fired.fetch_add(1, Ordering::SeqCst);
                (left as usize, true)
            }
            ProxyFault::ResetAfterBytes(left) => {
                *fault = ProxyFault::ResetAfterBytes(left - len as u64);
                (len, false)
            }
            _ => (len, false),
        }
    }
}

/// A fault-injecting TCP proxy on `127.0.0.1:<free port>` in front of one upstream address.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`, with no
    /// fault. Must be called within a tokio runtime (it spawns its accept loop there).
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        Self::start_on(0, upstream).await
    }

    /// Like [`FaultProxy::start`], on a given loopback `port` (0: a free one).
    pub async fn start_on(port: u16, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(ProxyFault::None),
            connections: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Switches the fault; it applies to the next chunk on every connection, open or new.
    pub fn set_fault(&self, fault: ProxyFault) {
        *self.shared.fault.lock().expect("fault lock") = fault;
    }

    /// The fault in force (a one-shot fault that fired reads as [`ProxyFault::None`]).
    pub fn fault(&self) -> ProxyFault {
        self.shared.fault()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many one-shot faults (reply lost, reset after bytes) have fired.
    pub fn faults_fired(&self) -> u64 {
        self.shared.fired.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                tasks.spawn(proxy_connection(client, shared.clone()));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Closes `stream` with a `RST` instead of a `FIN`.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn proxy_connection(mut client: TcpStream, shared: Arc<Shared>) {
    let Ok(mut server) = TcpStream::connect(shared.upstream).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    // Replies swallowed by a blackhole: the stream can never be resumed.
    let mut holed = false;
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if holed && shared.fault() != ProxyFault::Blackhole {
                    reset(client);
                    return;
                }
                if shared.take_reply_lost(&from_client[..n]) {
                    if server.write_all(&from_client[..n]).await.is_err() {
                        reset(client);
                        return;
                    }
                    swallow_reply(&mut server, &mut from_server).await;
                    reset(client);
                    return;
                }
                match forward(&shared, &mut server, &from_client[..n]).await {
                    Step::Go => {}
                    Step::Reset => { reset(client); return; }
                    Step::Closed => return,
                }
            }
            read = server.read(&mut from_server) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if shared.fault() == ProxyFault::Blackhole {
                    holed = true;
                    continue;
                }
                if holed {
                    reset(client);
                    return;
                }
                match forward(&shared, &mut client, &from_server[..n]).await {
                    Step::Go => {}
                    Step::Reset => { reset(client); return; }
                    Step::Closed => return,
                }
            }
        }
    }
}

/// Waits for the server's reply to the forwarded chunk and drops it: the first bytes (up to
/// 5 s), then whatever follows within [`SWALLOW_FOR`].
async fn swallow_reply(server: &mut TcpStream, buf: &mut [u8]) {
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), server.read(buf)).await,
        Ok(Ok(1..))
    ) {
        return;
    }
    let until = tokio::time::Instant::now() + SWALLOW_FOR;
    while let Ok(Ok(1..)) = tokio::time::timeout_at(until, server.read(buf)).await {}
}

enum Step {
    Go,
    Reset,
    Closed,
}

/// Forwards `chunk` to `to` under the current fault.
async fn forward(shared: &Shared, to: &mut TcpStream, chunk: &[u8]) -> Step {
    if let ProxyFault::Latency(delay) = shared.fault() {
        tokio::time::sleep(delay).await;
    }
    let (len, then_reset) = shared.spend(chunk.len());
    if to.write_all(&chunk[..len]).await.is_err() {
        return Step::Closed;
    }
    if then_reset {
        let _ = to.flush().await;
        Step::Reset
    } else {
        Step::Go
    }
}

#[cfg(feature = "chaos")]
impl state_testkit::chaos::FaultInjector for FaultProxy {
    fn inject(&self, fault: state_testkit::chaos::WireFault) {
        use state_testkit::chaos::WireFault;
        self.set_fault(match fault {
            WireFault::ReplyLostThenReset => ProxyFault::ReplyLostThenReset,
            WireFault::ResetAfterBytes(n) => ProxyFault::ResetAfterBytes(n),
            WireFault::Latency(delay) => ProxyFault::Latency(delay),
            WireFault::Blackhole => ProxyFault::Blackhole,
        });
    }

    fn heal(&self) {
        self.set_fault(ProxyFault::None);
    }

    fn fired(&self) -> u64 {
        self.faults_fired()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every chunk with `"re:" + chunk`, and counts what it got.
    async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        counter.fetch_add(n as u64, Ordering::SeqCst);
                        let mut reply = b"re:".to_vec();
                        reply.extend_from_slice(&buf[..n]);
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, received)
    }

    async fn roundtrip(client: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        client.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len() + 3];
        client.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn forwards_untouched_without_fault() {
        let (up, _) = upstream().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"hello").await.unwrap(), b"re:hello");
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.upstream(), up);
    }

    #[tokio::test]
    async fn latency_delays_each_direction() {
        let (up, _) = upstream().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        proxy.set_fault(ProxyFault::Latency(Duration::from_millis(100)));
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(roundtrip(&mut c, b"slow").await.unwrap(), b"re:slow");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn reply_lost_then_reset_delivers_the_request_but_not_the_reply() {
        let (up, received) = upstream().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"one").await.unwrap(), b"re:one");
        proxy.set_fault(ProxyFault::ReplyLostThenReset);
        let err = roundtrip(&mut c, b"two").await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            ),
            "{err:?}"
        );
        assert_eq!(received.load(Ordering::SeqCst), 6, "the server got both");
        assert_eq!(proxy.faults_fired(), 1);
        assert_eq!(proxy.fault(), ProxyFault::None);
        // A new connection works again.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"three").await.unwrap(), b"re:three");
    }

    #[tokio::test]
    async fn reply_lost_on_a_pattern_waits_for_a_matching_chunk() {
        let (up, received) = upstream().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set_fault(ProxyFault::ReplyLostThenResetOn(b"DEL"));
        assert_eq!(roundtrip(&mut c, b"GET k").await.unwrap(), b"re:GET k");
        assert_eq!(proxy.faults_fired(), 0);
        assert!(roundtrip(&mut c, b"DEL k").await.is_err());
        assert_eq!(received.load(Ordering::SeqCst), 10);
        assert_eq!(proxy.faults_fired(), 1);
    }

    #[tokio::test]
    async fn blackhole_forwards_requests_and_drops_replies() {
        let (up, received) = upstream().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set_fault(ProxyFault::Blackhole);
        let answer =
            tokio::time::timeout(Duration::from_millis(300), roundtrip(&mut c, b"x")).await;
        assert!(answer.is_err(), "no answer while blackholed");
        assert_eq!(received.load(Ordering::SeqCst), 1);
        // A fresh connection is held open too, and a request on it gets no answer either.
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        let answer =
            tokio::time::timeout(Duration::from_millis(200), roundtrip(&mut fresh, b"z")).await;
        assert!(answer.is_err());
        proxy.set_fault(ProxyFault::None);
        // The connections that lost replies are reset at their next traffic; new ones work.
        assert!(roundtrip(&mut c, b"y").await.is_err());
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"y").await.unwrap(), b"re:y");
    }

    #[tokio::test]
    async fn reset_after_bytes_cuts_the_stream_at_the_limit() {
        let (up, received) = upstream().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        // 4 bytes out, then 3 of the 7-byte reply, then a reset.
        proxy.set_fault(ProxyFault::ResetAfterBytes(7));
        c.write_all(b"abcd").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, b"re:");
        assert_eq!(received.load(Ordering::SeqCst), 4);
        assert_eq!(proxy.faults_fired(), 1);
        assert_eq!(proxy.fault(), ProxyFault::None);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let (up, _) = upstream().await;
        let proxy = FaultProxy::start(up).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"a").await.unwrap(), b"re:a");
        drop(proxy);
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
