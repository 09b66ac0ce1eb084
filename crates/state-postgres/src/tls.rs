//! Plain or rustls-encrypted connections, chosen from [`TlsMode`].

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use state_core::{StateError, StateResult};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::TlsMode;
use crate::error::map_pg;

/// How connections are made: without TLS, or with a rustls client config.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Plain TCP unless the URL asks for TLS (then TLS is refused by the client).
    Plain,
    /// TLS with rustls (ring), verifying the server certificate.
    Rustls {
        make: MakeRustlsConnect,
        /// Forces `sslmode=require` on every config, whatever the URL says.
        force: bool,
    },
}

impl Connector {
    /// `url` decides for [`TlsMode::FromUrl`]: TLS when it sets an `sslmode` other than
    /// `disable`, plain otherwise (tokio-postgres would otherwise default to `prefer`, costing
    /// an extra round trip per connection against servers without TLS).
    pub(crate) fn new(mode: &TlsMode, url: &str) -> StateResult<Self> {
        let roots = |extra: Option<&std::path::Path>| -> StateResult<rustls::RootCertStore> {
            let mut store = rustls::RootCertStore::empty();
            if let Some(path) = extra {
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                    StateError::config(format!("cannot read CA file {}: {e}", path.display()))
                })?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        StateError::config(format!("bad CA file {}: {e}", path.display()))
                    })?;
                    store
                        .add(cert)
                        .map_err(|e| StateError::config(format!("bad CA certificate: {e}")))?;
                }
            } else {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A malformed system certificate is skipped, like browsers do.
                    let _ = store.add(cert);
                }
            }
            Ok(store)
        };
        let rustls = |store: rustls::RootCertStore, force: bool| -> StateResult<Self> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| StateError::config(format!("TLS setup: {e}")))?
                .with_root_certificates(store)
                .with_no_client_auth();
            Ok(Self::Rustls {
                make: MakeRustlsConnect::new(config),
                force,
            })
        };
        match mode {
            TlsMode::FromUrl if url.contains("sslmode=") && !url.contains("sslmode=disable") => {
                rustls(roots(None)?, false)
            }
            TlsMode::Disable | TlsMode::FromUrl => Ok(Self::Plain),
            TlsMode::Require => rustls(roots(None)?, true),
            TlsMode::RequireWithCa(path) => rustls(roots(Some(path))?, true),
        }
    }

    /// Applies the mode to a connection config (`Disable` also turns TLS off in the config).
    pub(crate) fn configure(&self, mut pg: tokio_postgres::Config) -> tokio_postgres::Config {
        match self {
            Self::Plain => {
                pg.ssl_mode(SslMode::Disable);
            }
            Self::Rustls { force: true, .. } => {
                pg.ssl_mode(SslMode::Require);
            }
            Self::Rustls { force: false, .. } => {}
        }
        pg
    }

    /// A deadpool manager connecting this way.
    pub(crate) fn manager(&self, pg: tokio_postgres::Config, config: ManagerConfig) -> Manager {
        match self {
            Self::Plain => Manager::from_config(pg, NoTls, config),
            Self::Rustls { make, .. } => Manager::from_config(pg, make.clone(), config),
        }
    }

    /// Opens one connection outside the pool and drives it on a spawned task; `on_message`
    /// receives its asynchronous messages (notifications).
    pub(crate) async fn connect_with_messages(
        &self,
        pg: &tokio_postgres::Config,
        sink: tokio::sync::mpsc::UnboundedSender<tokio_postgres::AsyncMessage>,
    ) -> StateResult<(Client, tokio::task::JoinHandle<()>)> {
        let pg = self.configure(pg.clone());
        match self {
            Self::Plain => {
                let (client, connection) = pg.connect(NoTls).await.map_err(map_pg)?;
                Ok((client, tokio::spawn(drive(connection, sink))))
            }
            Self::Rustls { make, .. } => {
                let (client, connection) = pg.connect(make.clone()).await.map_err(map_pg)?;
                Ok((client, tokio::spawn(drive(connection, sink))))
            }
        }
    }
}

/// Polls a connection, forwarding its asynchronous messages, until it closes.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    sink: tokio::sync::mpsc::UnboundedSender<tokio_postgres::AsyncMessage>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(message)) => {
                if sink.send(message).is_err() {
                    return;
                }
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "state-postgres: listener connection closed");
                return;
            }
            None => return,
        }
    }
}
