//! Commands that change state in a way a re-send could falsify, sent with one write attempt.
//!
//! fred re-writes a command that was in flight when its connection dropped, up to
//! `max_command_attempts` times (this crate's [`crate::RedisConfigBuilder::max_retries`]).
//! For `SET NX`, `GETDEL`, a `DEL` whose count is returned or a compare-and-swap script that
//! landed before the connection dropped, the re-sent copy answers against the first copy's
//! effect (`false`, `None`, 0), and the caller gets a wrong definite answer. These commands go
//! out with fred's per-command [`Options`] `max_attempts: Some(1)`, and their failure is
//! mapped by [`crate::map_write_error`] ([`state_core::ErrorKind::OutcomeUnknown`] when the
//! command may have been applied).

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::config::Options;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, FromValue, Value};
use state_core::StateResult;

use crate::error::{map_fred, map_fred_write};

/// fred per-command options for one write attempt: the command is never re-sent after a
/// connection drop (a `MOVED`/`ASK` redirection counts as an attempt in fred 10, so a
/// redirected single-attempt command reports an unknown outcome too).
///
/// Use it as `client.with_options(&one_attempt())`.
pub fn one_attempt() -> Options {
    Options {
        max_attempts: Some(1),
        ..Options::default()
    }
}

/// Runs `script` by `EVALSHA` with one write attempt (loading it with `SCRIPT LOAD` on every
/// primary and sending it once more on `NOSCRIPT`, which the server answers without running
/// anything). Keys must share one hash slot in a Cluster; the command goes to the node of the
/// first key.
///
/// Errors are mapped by [`crate::map_write_error`]: a connection lost with the script in
/// flight, or the command timeout after it was written, is
/// [`state_core::ErrorKind::OutcomeUnknown`].
pub async fn eval_once<R: FromValue>(
    client: &Client,
    script: &Script,
    keys: Vec<Bytes>,
    args: Vec<Bytes>,
) -> StateResult<R> {
    let hash = keys.first().map_or(ClusterHash::Random, |first| {
        ClusterHash::Custom(fred::util::redis_keyslot(first))
    });
    let once = client.with_options(&one_attempt());
    let mut values: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    values.push(Value::from(script.sha1().clone()));
    values.push(Value::from(keys.len() as i64));
    values.extend(keys.into_iter().map(Value::Bytes));
    values.extend(args.into_iter().map(Value::Bytes));
    let evalsha = || CustomCommand::new_static("EVALSHA", hash.clone(), false);
    match once.custom::<R, Value>(evalsha(), values.clone()).await {
        Err(err) if err.details().starts_with("NOSCRIPT") => {
            script.load(client).await.map_err(map_fred)?;
            once.custom::<R, Value>(evalsha(), values)
                .await
                .map_err(map_fred_write)
        }
        result => result.map_err(map_fred_write),
    }
}

/// One write's client. Dropped before [`Sending::answered`] (the caller's future was dropped
/// with the command possibly queued or on the wire, or the command failed), a spawned task
/// sends `PING` behind it on the same connection (each primary's, in a Cluster) until one is
/// answered, and later writes wait ([`state_core::OrphanedWrites`]) until then, so the
/// dropped command cannot reach Redis after a later acknowledged write sent on another pooled
/// connection. A `PING` that times out is sent again rather than given up: the dropped
/// command may be held up on the network past the command timeout and still run when it
/// arrives (`tests/cancellation.rs`); meanwhile later writes fail unsent (`Timeout`).
pub(crate) struct Sending {
    client: Client,
    orphans: std::sync::Arc<state_core::OrphanedWrites>,
    armed: bool,
}

impl Sending {
    pub(crate) fn new(client: Client, orphans: std::sync::Arc<state_core::OrphanedWrites>) -> Self {
        Self {
            client,
            orphans,
            armed: true,
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Redis answered the write: nothing of it is left in flight.
    pub(crate) fn answered(mut self) {
        self.armed = false;
    }
}

/// How long to wait between two `PING`s that were not answered (connection lost, reconnecting).
const PING_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Sends `PING` on `client`'s connection (to `node` in a Cluster) until Redis answers one: then
/// everything sent before the first one was answered too. Stops when the client was closed, or
/// `node` is no longer a primary of the cluster (its connection and what was queued on it are
/// gone).
async fn ping_until_answered(client: Client, node: Option<fred::types::config::Server>) {
    loop {
        let pong: Result<Value, fred::error::Error> = match &node {
            Some(node) => client.with_cluster_node(node.clone()).ping(None).await,
            None => client.ping(None).await,
        };
        // Not answered (yet): the PING timed out, or its connection was lost and is being
        // re-established (fred re-sends what was queued on it, the dropped write first). Any
        // other outcome is an answer (an error reply too), or `Canceled`: the client closed.
        let unanswered = pong.as_ref().is_err_and(|err| {
            matches!(
                err.kind(),
                fred::error::ErrorKind::Timeout
                    | fred::error::ErrorKind::IO
                    | fred::error::ErrorKind::Routing
                    | fred::error::ErrorKind::Cluster
                    | fred::error::ErrorKind::Backpressure
            )
        });
        if !unanswered {
            return;
        }
        if let Some(node) = &node {
            let still_primary = client
                .cached_cluster_state()
                .is_some_and(|state| state.unique_primary_nodes().contains(node));
            if !still_primary {
                return;
            }
        }
        tokio::time::sleep(PING_AGAIN_AFTER).await;
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.client.clone();
        self.orphans.drain_in_background(async move {
            if client.is_clustered() {
                let primaries = client
                    .cached_cluster_state()
                    .map(|state| state.unique_primary_nodes())
                    .unwrap_or_default();
                let pings = primaries
                    .into_iter()
                    .map(|node| ping_until_answered(client.clone(), Some(node)));
                futures_util::future::join_all(pings).await;
            } else {
                ping_until_answered(client, None).await;
            }
        });
    }
}
