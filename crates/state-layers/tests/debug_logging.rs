//! The seed's debug mode through `Instrumented`. In its own test binary: `tracing` caches
//! each callsite's interest process-wide, and tests without a subscriber running beside this
//! one would register the callsites as uninteresting.

use std::sync::Arc;

use state_core::{ErrorKind, StateBackend};
use state_layers::{Fault, FaultInjector, Instrumented, Op};
use state_memory::MemoryStateBackend;

fn faulty() -> Arc<FaultInjector> {
    Arc::new(FaultInjector::new(Arc::new(MemoryStateBackend::new(None))))
}

/// With a DEBUG subscriber (the seed's debug mode), each operation logs one line naming the
/// backend, the operation, the outcome and the latency.
#[test]
fn instrumented_logs_each_operation_at_debug() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(data)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let faults = faulty();
    let layer = Instrumented::new(faults.clone(), "sessions");
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            layer.put(b"user:1", b"v").await.unwrap();
            faults.inject(Some(Op::Get), Fault::Fail(ErrorKind::Connection));
            layer.get(b"user:1").await.unwrap_err();
            layer.batch_get(&[b"a", b"b"]).await.unwrap();
        });
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("state operation"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("backend=sessions") && lines[0].contains("op=\"put\""),
        "{out}"
    );
    assert!(
        lines[0].contains("key_len=6") && lines[0].contains("outcome=\"ok\""),
        "{out}"
    );
    assert!(lines[0].contains("latency_us="), "{out}");
    assert!(
        lines[1].contains("failed") && lines[1].contains("error="),
        "{out}"
    );
    assert!(lines[2].contains("items=2"), "{out}");
}
