//! The PostgreSQL harness end to end: a primary and a streaming replica, replication, a
//! crash (SIGKILL) and restart, a fast restart, cleanup on drop.
//!
//! These tests fail (they never skip) when PostgreSQL cannot be found, installed or started.

use std::io;
use std::time::{Duration, Instant};

use state_test_servers::postgres::PostgresServer;

/// Polls `sql` on `server` until it prints `expected`, up to `timeout`.
fn wait_for(server: &PostgresServer, sql: &str, expected: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = server.psql(sql);
        if got.as_deref().ok() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql:?} on :{} gave {got:?}, not {expected:?}, after {timeout:?}",
            server.port()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn replica_streams_and_primary_survives_a_crash() -> io::Result<()> {
    let started = Instant::now();
    let mut primary = PostgresServer::temp("crash-primary")?;
    let replica = PostgresServer::temp_replica(&primary, "crash-replica")?;
    primary.wait_replica_streaming(Duration::from_secs(30))?;
    eprintln!(
        "primary :{} + replica :{} streaming after {:.2?}",
        primary.port(),
        replica.port(),
        started.elapsed()
    );
    assert_eq!(primary.psql("SELECT pg_is_in_recovery()")?, "f");
    assert_eq!(replica.psql("SELECT pg_is_in_recovery()")?, "t");

    primary.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one')")?;
    wait_for(
        &replica,
        "SELECT v FROM t WHERE id = 1",
        "one",
        Duration::from_secs(10),
    );
    assert!(
        replica.psql("INSERT INTO t VALUES (9, 'nine')").is_err(),
        "a hot standby is read-only"
    );

    let old_pid = primary.pid().expect("started");
    primary.kill();
    assert_eq!(primary.pid(), None);
    assert!(
        primary.psql("SELECT 1").is_err(),
        "a killed server answers nothing"
    );
    primary.start()?;
    assert_ne!(primary.pid(), Some(old_pid));
    assert!(
        primary
            .log_tail(200)
            .contains("database system was interrupted"),
        "the restart ran crash recovery:\n{}",
        primary.log_tail(40)
    );
    assert_eq!(primary.psql("SELECT v FROM t WHERE id = 1")?, "one");

    // The replica reconnects by itself and keeps streaming.
    primary.psql("INSERT INTO t VALUES (2, 'two')")?;
    wait_for(
        &replica,
        "SELECT string_agg(v, ',' ORDER BY id) FROM t",
        "one,two",
        Duration::from_secs(30),
    );
    primary.wait_replica_streaming(Duration::from_secs(30))?;
    Ok(())
}

#[test]
fn restart_keeps_data_and_drop_removes_the_data_dir() -> io::Result<()> {
    let mut server = PostgresServer::temp("restart")?;
    assert!(
        server
            .url()
            .ends_with(&format!(":{}/postgres", server.port()))
    );
    assert!(server.psql("SELECT * FROM missing_table").is_err());
    server.psql("CREATE TABLE t AS SELECT 42 AS v")?;
    let dir = server.data_dir().to_path_buf();
    server.restart()?;
    assert!(server.is_running());
    assert_eq!(server.psql("SELECT v FROM t")?, "42");
    assert_eq!(server.psql("SHOW max_connections")?, "500");
    server.stop();
    assert!(!server.is_running());
    assert!(dir.join("PG_VERSION").is_file());
    drop(server);
    assert!(!dir.exists(), "{} is removed on drop", dir.display());
    Ok(())
}
