//! Timeout and Retry against a real Redis server that stops answering: a throwaway
//! `redis-server` (`STATE_REDIS_SERVER_BIN`, exported by `cargo xtask test`) frozen with
//! SIGSTOP and thawed with SIGCONT.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::ExponentialBuilder;
use bytes::Bytes;
use common::{env, redis_at};
use state_core::{ErrorKind, StateBackend};
use state_layers::{Retry, Timeout};

struct Server(Child);

impl Server {
    fn start() -> (Self, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env("STATE_REDIS_SERVER_BIN"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (Self(child), port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A frozen server makes `get` hang; `Timeout` turns that into a retryable Timeout error,
/// and `Retry` over `Timeout` rides out the freeze once the server thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_times_out_and_retry_recovers_after_thaw() {
    let (server, port) = Server::start();
    let redis = redis_at(&format!("redis://127.0.0.1:{port}"), "frozen:".into())
        .await
        .unwrap();
    redis.put(b"k", b"v").await.unwrap();
    let timed: Arc<dyn StateBackend> =
        Arc::new(Timeout::new(redis.clone(), Duration::from_millis(150)));

    server.signal("-STOP");
    let started = Instant::now();
    let err = timed.get(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));

    let retry = Retry::new(timed.clone()).with_backoff(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(400))
            .with_max_times(8),
    );
    let thaw = {
        let pid = server.0.id();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status()
                .expect("kill -CONT");
        })
    };
    assert_eq!(
        retry.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
    assert!(retry.retries() >= 1, "the freeze cost at least one retry");
    thaw.await.unwrap();
    drop(server);
}
