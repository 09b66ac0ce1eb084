//! Certificates made at test time (never committed): a CA, a server certificate it signs
//! for `localhost` and `127.0.0.1`, and an unrelated CA that trusts nothing of ours.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// PEM files written by [`TestCerts::generate`].
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    /// The server certificate (for `localhost` and `127.0.0.1`).
    pub server_cert: PathBuf,
    /// The server certificate's private key (mode 0600).
    pub server_key: PathBuf,
    /// A CA that did not sign anything the servers present: verification against it fails.
    pub other_ca: PathBuf,
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(io_err)`
fn io_err(err: rcgen::Error) -> io::Error {
    io::Error::other(format!("rcgen: {err}"))
}

fn new_ca(name: &str) -> io::Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(io_err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().map_err(io_err)?;
    let cert = params.self_signed(&key).map_err(io_err)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

impl TestCerts {
    /// Generates the certificates into `dir` (created).
    pub fn generate(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let (ca_pem, issuer) = new_ca("state test CA")?;
        let (other_pem, _) = new_ca("state unrelated CA")?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(io_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(io_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(io_err)?;
        let certs = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            other_ca: dir.join("other-ca.pem"),
        };
        fs::write(&certs.ca, ca_pem)?;
        fs::write(&certs.other_ca, other_pem)?;
        fs::write(&certs.server_cert, cert.pem())?;
        write_private(&certs.server_key, key.serialize_pem().as_bytes())?;
        Ok(certs)
    }
}

/// Writes a file readable by its owner only (PostgreSQL refuses a key others can read).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}
