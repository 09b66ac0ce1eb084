//! Fault proxies for manual runs: `cargo xtask services up` puts a [`FaultProxy`] in front of
//! Redis standalone and the PostgreSQL primary, exports their URLs (`STATE_REDIS_PROXY_URL`,
//! `STATE_POSTGRES_PROXY_URL`) and a control address (`STATE_PROXY_CONTROL`), and
//! `cargo xtask proxy <name> <fault>` switches a proxy's fault while clients run through it.
//!
//! The control is a line protocol on a loopback TCP port, one command per connection, so a
//! shell can drive it too (`echo "redis latency 200" | nc 127.0.0.1 $PORT`):
//!
//! | command | effect |
//! |---|---|
//! | `status` | each proxy: upstream, fault in force, connections, one-shot faults fired |
//! | `<name> none` | forward untouched |
//! | `<name> latency <ms>` | delay every chunk, both ways |
//! | `<name> reply-lost` | one shot: deliver the next request, drop its reply, reset |
//! | `<name> reply-lost-on <text>` | the same, for the first request containing `text` |
//! | `<name> blackhole` | deliver requests, answer nothing, keep connections open |
//! | `<name> reset-after <bytes>` | one shot: reset after that many more bytes |
//!
//! `<name>` is `redis` or `postgres`. The reply is one line: `ok ...` or `error ...`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use state_test_servers::proxy::{FaultProxy, ProxyFault};

/// The proxies started for `services up`; they live as long as the process.
pub(crate) struct Proxies {
    /// Variables to export: the proxies' URLs and the control address.
    pub(crate) env: Vec<(String, String)>,
}

/// `host:port` of a `scheme://[user@]host:port[/path]` URL.
fn hostport(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// `url` with its `host:port` replaced by `127.0.0.1:port`.
fn via(url: &str, port: u16) -> Option<String> {
    let old = hostport(url)?;
    Some(url.replacen(old, &format!("127.0.0.1:{port}"), 1))
}

/// Starts a proxy in front of each server of `env` that has one (`STATE_REDIS_URL`,
/// `STATE_POSTGRES_URL`), on a runtime thread of their own, and the control port.
pub(crate) fn start(env: &[(String, String)]) -> anyhow::Result<Proxies> {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let mut targets = Vec::new();
    for (name, var, export) in [
        ("redis", "STATE_REDIS_URL", "STATE_REDIS_PROXY_URL"),
        ("postgres", "STATE_POSTGRES_URL", "STATE_POSTGRES_PROXY_URL"),
    ] {
        let Some(url) = lookup(var) else { continue };
        let addr: SocketAddr = hostport(&url)
            .and_then(|h| h.parse().ok())
            .with_context(|| format!("{var}={url}: expected an IP host and a port"))?;
        targets.push((name, url, addr, export));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.2).collect();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut proxies = Vec::new();
            for addr in addrs {
                proxies.push(FaultProxy::start(addr).await.map(Arc::new));
            }
            let _ = tx.send(proxies);
            // Serve the proxies until the process ends.
            std::future::pending::<()>().await;
        });
    });
    let proxies = rx.recv().context("the proxy thread stopped")?;
    let mut env = Vec::new();
    let mut named = Vec::new();
    for ((name, url, _, export), proxy) in targets.into_iter().zip(proxies) {
        let proxy = proxy.with_context(|| format!("starting the {name} proxy"))?;
        let proxied = via(&url, proxy.port()).expect("parsed above");
        eprintln!("xtask: {name} fault proxy at {proxied}");
        env.push((export.to_owned(), proxied));
        named.push((name, proxy));
    }
    let control = TcpListener::bind("127.0.0.1:0")?;
    env.push((
        "STATE_PROXY_CONTROL".to_owned(),
        control.local_addr()?.to_string(),
    ));
    std::thread::spawn(move || {
        for stream in control.incoming().flatten() {
            let _ = serve(&stream, &named);
        }
    });
    Ok(Proxies { env })
}

/// Answers one control command.
fn serve(stream: &TcpStream, proxies: &[(&'static str, Arc<FaultProxy>)]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let reply = match apply(line.trim(), proxies) {
        Ok(reply) => format!("ok {reply}\n"),
        Err(err) => format!("error {err:#}\n"),
    };
    let mut stream = stream;
    stream.write_all(reply.as_bytes())
}

fn apply(line: &str, proxies: &[(&'static str, Arc<FaultProxy>)]) -> anyhow::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() == Some(&"status") || words.is_empty() {
        let lines: Vec<String> = proxies
            .iter()
            .map(|(name, p)| {
                format!(
                    "{name}: 127.0.0.1:{} -> {}, fault {:?}, connections {}, one-shots fired {}",
                    p.port(),
                    p.upstream(),
                    p.fault(),
                    p.connections(),
                    p.faults_fired()
                )
            })
            .collect();
        return Ok(lines.join("; "));
    }
    let Some((_, proxy)) = proxies.iter().find(|(name, _)| *name == words[0]) else {
        let names: Vec<&str> = proxies.iter().map(|(n, _)| *n).collect();
        bail!(
            "no proxy named {:?}; proxies: {}",
            words[0],
            names.join(", ")
        );
    };
    let number = |what: &str| -> anyhow::Result<u64> {
        words
            .get(2)
            .with_context(|| format!("`{} {}` needs {what}", words[0], words[1]))?
            .parse()
            .with_context(|| format!("{what} must be a number"))
    };
    let fault = match words.get(1).copied() {
        Some("none") => ProxyFault::None,
        Some("latency") => ProxyFault::Latency(Duration::from_millis(number("milliseconds")?)),
        Some("reply-lost") => ProxyFault::ReplyLostThenReset,
        Some("reply-lost-on") => {
            let text = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            if text.is_empty() {
                bail!("`reply-lost-on` needs the text a request must contain");
            }
            // A manual tool: the few patterns set in a session may live as long as it does.
            ProxyFault::ReplyLostThenResetOn(Box::leak(text.into_bytes().into_boxed_slice()))
        }
        Some("blackhole") => ProxyFault::Blackhole,
        Some("reset-after") => ProxyFault::ResetAfterBytes(number("a byte count")?),
        other => bail!(
            "unknown fault `{}`: use none, latency <ms>, reply-lost, reply-lost-on <text>, \
             blackhole or reset-after <bytes>",
            other.unwrap_or_default()
        ),
    };
    proxy.set_fault(fault);
    Ok(format!("{} {fault:?}", words[0]))
}

/// `cargo xtask proxy ARGS`: sends `ARGS` as one control command to the proxies of a running
/// `services up` (found through `STATE_PROXY_CONTROL`, or `target/services/env.sh`), and
/// prints the reply.
pub(crate) fn command(args: &[String]) -> anyhow::Result<()> {
    let control = if let Ok(addr) = std::env::var("STATE_PROXY_CONTROL") {
        addr
    } else {
        let file = crate::cmd::workspace_root().join("target/services/env.sh");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no STATE_PROXY_CONTROL and no {}: start `cargo xtask services up` first",
                file.display()
            )
        })?;
        text.lines()
            .find_map(|l| l.strip_prefix("export STATE_PROXY_CONTROL="))
            .map(str::to_owned)
            .with_context(|| format!("{} exports no STATE_PROXY_CONTROL", file.display()))?
    };
    let line = if args.is_empty() {
        "status".to_owned()
    } else {
        args.join(" ")
    };
    let mut stream = TcpStream::connect(&control).with_context(|| {
        format!("connecting to the proxy control at {control}; is `services up` running?")
    })?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    let reply = reply.trim_end();
    for part in reply.split("; ") {
        println!("{part}");
    }
    if reply.starts_with("ok") {
        Ok(())
    } else {
        bail!("the proxy control refused `{line}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_to_the_proxy() {
        assert_eq!(
            via("postgres://postgres@127.0.0.1:5432/postgres", 9),
            Some("postgres://postgres@127.0.0.1:9/postgres".to_owned())
        );
        assert_eq!(
            via("redis://127.0.0.1:6379", 9),
            Some("redis://127.0.0.1:9".to_owned())
        );
        assert_eq!(hostport("redis://u:p@10.0.0.1:1/0"), Some("10.0.0.1:1"));
    }

    #[tokio::test]
    async fn control_commands_switch_the_fault() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Arc::new(
            FaultProxy::start(upstream.local_addr().unwrap())
                .await
                .unwrap(),
        );
        let proxies = [("redis", proxy.clone())];
        apply("redis latency 200", &proxies).unwrap();
        assert_eq!(
            proxy.fault(),
            ProxyFault::Latency(Duration::from_millis(200))
        );
        apply("redis reply-lost-on SET NX", &proxies).unwrap();
        assert_eq!(proxy.fault(), ProxyFault::ReplyLostThenResetOn(b"SET NX"));
        apply("redis reset-after 10", &proxies).unwrap();
        assert_eq!(proxy.fault(), ProxyFault::ResetAfterBytes(10));
        apply("redis none", &proxies).unwrap();
        assert_eq!(proxy.fault(), ProxyFault::None);
        assert!(apply("status", &proxies).unwrap().contains("fault None"));
        assert!(apply("redis latency", &proxies).is_err());
        assert!(apply("redis teleport", &proxies).is_err());
        assert!(apply("mongo none", &proxies).is_err());
    }
}
