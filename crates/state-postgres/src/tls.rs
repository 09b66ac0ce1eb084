//! Plain or rustls-encrypted connections, decided per connection from its parsed
//! [`TlsRequest`] (never from the URL's text, never once for all connections).
//!
//! | sslmode | TLS | certificate check |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (default) | when the server offers it | none (as libpq) |
//! | `require` | always | none, or the chain against `sslrootcert` when given (as libpq) |
//! | `verify-ca` | always | chain against `sslrootcert` (or the system store) |
//! | `verify-full` | always | chain and host name |

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig};
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use state_core::{StateError, StateResult};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::conninfo::{RootCerts, SslModeRequest, TlsRequest};
use crate::error::map_pg;

/// How one target's connections are made: without TLS, or with a rustls client config.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Plain TCP (`sslmode=disable`).
    Plain,
    /// TLS with rustls (ring); whether it is required is in the connection's `SslMode`.
    Rustls(MakeRustlsConnect),
}

fn load_roots(roots: &RootCerts) -> StateResult<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
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
            if store.is_empty() {
                return Err(StateError::config(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
        }
        RootCerts::System => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A malformed system certificate is skipped, like browsers do.
                let _ = store.add(cert);
            }
        }
    }
    Ok(store)
}

impl Connector {
    /// The connector for one connection target.
    pub(crate) fn new(request: &TlsRequest) -> StateResult<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| StateError::config(format!("TLS setup: {e}")))?;
        let roots = |default: RootCerts| {
            load_roots(request.roots.as_ref().unwrap_or(&default)).map(Arc::new)
        };
        let web_pki = |store: Arc<rustls::RootCertStore>| {
            WebPkiServerVerifier::builder_with_provider(store, Arc::clone(&provider))
                .build()
                .map_err(|e| StateError::config(format!("TLS setup: {e}")))
        };
        let verifier: Arc<dyn ServerCertVerifier> = match request.mode {
            SslModeRequest::Disable => return Ok(Self::Plain),
            SslModeRequest::Require if request.roots.is_some() => {
                Arc::new(ChainOnly(web_pki(roots(RootCerts::System)?)?))
            }
            SslModeRequest::Allow | SslModeRequest::Prefer | SslModeRequest::Require => {
                Arc::new(EncryptOnly(Arc::clone(&provider)))
            }
            SslModeRequest::VerifyCa => Arc::new(ChainOnly(web_pki(roots(RootCerts::System)?)?)),
            SslModeRequest::VerifyFull => web_pki(roots(RootCerts::System)?)?,
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self::Rustls(MakeRustlsConnect::new(config)))
    }

    /// A deadpool manager connecting this way.
    pub(crate) fn manager(&self, pg: tokio_postgres::Config, config: ManagerConfig) -> Manager {
        match self {
            Self::Plain => Manager::from_config(pg, NoTls, config),
            Self::Rustls(make) => Manager::from_config(pg, make.clone(), config),
        }
    }

    /// Sends a cancel request for the statement `token`'s connection is running, over a new
    /// connection made the same way (same TLS) as the one it cancels.
    pub(crate) async fn cancel(
        &self,
        token: &tokio_postgres::CancelToken,
    ) -> Result<(), tokio_postgres::Error> {
        match self {
            Self::Plain => token.cancel_query(NoTls).await,
            Self::Rustls(make) => token.cancel_query(make.clone()).await,
        }
    }

    /// Opens one connection outside the pool and drives it on a spawned task; `sink`
    /// receives its asynchronous messages (notifications).
    pub(crate) async fn connect_with_messages(
        &self,
        pg: &tokio_postgres::Config,
        sink: tokio::sync::mpsc::UnboundedSender<tokio_postgres::AsyncMessage>,
    ) -> StateResult<(Client, tokio::task::JoinHandle<()>)> {
        match self {
            Self::Plain => {
                let (client, connection) = pg.connect(NoTls).await.map_err(map_pg)?;
                Ok((client, tokio::spawn(drive(connection, sink))))
            }
            Self::Rustls(make) => {
                let (client, connection) = pg.connect(make.clone()).await.map_err(map_pg)?;
                Ok((client, tokio::spawn(drive(connection, sink))))
            }
        }
    }
}

/// `prefer` / `require` without a CA: encrypted against passive listeners, the server not
/// authenticated (libpq's behaviour). Handshake signatures are still checked.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        // webpki checks the chain first and the name last, so a name error means the chain
        // was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
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
