//! Certificates for Coffer deployments, made with rcgen.
//!
//! Three kinds, all ECDSA P-256:
//! - a **CA** (`ca.pem`, `ca.key`) that clients pass as `--ca` and servers use to
//!   verify cluster peers;
//! - **server** certificates for the names and addresses clients connect to
//!   (extended key usage: server authentication);
//! - **peer** certificates for cluster nodes: server *and* client
//!   authentication, and a `coffer-node://<node-id>` URI in the subject
//!   alternative names, which is how a node proves which node it is
//!   ([`node_id_of`]). Ordinary clients carry no certificate at all, so nothing
//!   a client holds can open a peer channel.
//!
//! Keys are written with mode 0600 and nothing is overwritten unless asked.
//! [`ensure_dev_tls`] is what `coffer-server` runs on first start without
//! `--tls-cert`: a development CA and a certificate for localhost, made once and
//! reused.
//!
//! What it is not: an ACME client or a revocation service.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// Scheme of the SAN URI that names a cluster node.
pub const NODE_URI_SCHEME: &str = "coffer-node://";

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file exists and `--force` was not given.
    #[error("{path} already exists (pass --force to overwrite it)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file does not hold the PEM it should.
    #[error("{path}: not a valid {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// A name or SAN that cannot go in a certificate.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// rcgen refused to build the certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start (set an hour early to absorb clock skew).
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour before `now` to `days` days after it.
    pub fn days_from(now: OffsetDateTime, days: i64) -> Validity {
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// Default lifetime of a CA: ten years.
pub const CA_DAYS: i64 = 3650;
/// Default lifetime of a server or peer certificate: two years.
pub const LEAF_DAYS: i64 = 730;

/// A certificate authority: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What kind of leaf certificate to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Serves clients.
    Server,
    /// A cluster node: serves clients and authenticates to peers.
    Peer,
}

/// A freshly issued certificate: the chain (leaf then CA) and the leaf's key.
pub struct Issued {
    /// Leaf certificate followed by the CA certificate, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` with `mode`, refusing to replace an existing
/// file unless `force`. Written to a temporary file and renamed, so a crash
/// leaves either the old file or the new one.
fn write(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    if !force && path.exists() {
        return Err(CertError::Exists {
            path: path.to_owned(),
        });
    }
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options.open(&tmp).map_err(io)?;
    // The mode given at creation is filtered by the umask; set it exactly.
    #[cfg(unix)]
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Checks a cluster node id: 1 to 63 characters of `[a-z0-9-]`, not starting
/// or ending with `-` (a DNS label, so it can double as a host name).
pub fn validate_node_id(id: &str) -> Result<(), CertError> {
    let bad = |reason| CertError::InvalidName {
        name: id.to_owned(),
        reason,
    };
    if id.is_empty() || id.len() > 63 {
        return Err(bad("a node id has 1 to 63 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("a node id holds only a-z, 0-9 and '-'"));
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err(bad("a node id neither starts nor ends with '-'"));
    }
    Ok(())
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason| CertError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b))
    {
        return Err(invalid("not an IP address or DNS name"));
    }
    Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|_| invalid("not ASCII"))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Coffer");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Ca {
    /// A new self-signed CA.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Ca, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its certificate and key, PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        // Parse the certificate now so that a broken file fails here, not at first issue.
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// Loads `DIR/ca.pem` and `DIR/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let cert = read(&cert_path)?;
        let key = Zeroizing::new(read(&key_path)?);
        Ca::from_pem(&cert, &key).map_err(|_| CertError::BadPem {
            path: dir.to_owned(),
            what: "CA certificate and key pair (ca.pem, ca.key)",
        })
    }

    /// Writes `DIR/ca.pem` (0644) and `DIR/ca.key` (0600).
    pub fn write(&self, dir: &Path, force: bool) -> Result<(), CertError> {
        create_dir(dir)?;
        write(
            &dir.join("ca.key"),
            self.key.serialize_pem().as_bytes(),
            0o600,
            force,
        )?;
        write(&dir.join("ca.pem"), self.cert_pem.as_bytes(), 0o644, force)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate. For a server, `name` is its common name and,
    /// when no `sans` are given, its only SAN; for a peer, `name` is the node id.
    pub fn issue(
        &self,
        kind: Kind,
        name: &str,
        sans: &[String],
        validity: Validity,
    ) -> Result<Issued, CertError> {
        let mut alt_names = sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        match kind {
            Kind::Server => {
                if alt_names.is_empty() {
                    alt_names.push(san(name)?);
                }
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Kind::Peer => {
                validate_node_id(name)?;
                let uri = format!("{NODE_URI_SCHEME}{name}");
                alt_names.push(SanType::URI(
                    Ia5String::try_from(uri).expect("node ids are ASCII"),
                ));
                alt_names.push(san(name)?);
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
        }
        alt_names.dedup();
        params.subject_alt_names = alt_names;
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

impl Issued {
    /// Writes `DIR/NAME.pem` (chain, 0644) and `DIR/NAME.key` (0600).
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        force: bool,
    ) -> Result<(PathBuf, PathBuf), CertError> {
        create_dir(dir)?;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        write(&key, self.key_pem.as_bytes(), 0o600, force)?;
        write(&cert, self.chain_pem.as_bytes(), 0o644, force)?;
        Ok((cert, key))
    }
}

/// The node id a peer certificate names (its `coffer-node://` SAN), if any.
pub fn node_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri
            .strip_prefix(NODE_URI_SCHEME)
            .filter(|id| validate_node_id(id).is_ok())
            .map(str::to_owned),
        _ => None,
    })
}

/// When the first certificate of a PEM file stops being valid.
fn not_after(pem: &str) -> Option<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// Paths of the development TLS material of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTls {
    /// The CA clients pass as `--ca`.
    pub ca: PathBuf,
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// Whether anything was generated by this call.
    pub generated: bool,
}

/// Makes sure `dir` holds a development CA and a server certificate for
/// `localhost`, `127.0.0.1` and `::1`, creating what is missing and reissuing a
/// server certificate that expires within 30 days. Existing material is reused.
pub fn ensure_dev_tls(dir: &Path, now: OffsetDateTime) -> Result<DevTls, CertError> {
    create_dir(dir)?;
    #[cfg(unix)]
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(
        |source| CertError::Io {
            path: dir.to_owned(),
            source,
        },
    )?;
    let tls = DevTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        generated: false,
    };
    let mut generated = false;
    let ca = if tls.ca.exists() {
        Ca::load(dir)?
    } else {
        let ca = Ca::generate("Coffer development CA", Validity::days_from(now, CA_DAYS))?;
        ca.write(dir, true)?;
        generated = true;
        ca
    };
    let fresh = tls.key.exists()
        && read(&tls.cert)
            .ok()
            .and_then(|pem| not_after(&pem))
            .is_some_and(|end| end > now + Duration::days(30));
    if generated || !fresh {
        let sans = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
        ca.issue(
            Kind::Server,
            "localhost",
            &sans,
            Validity::days_from(now, LEAF_DAYS),
        )?
        .write(dir, "server", true)?;
        generated = true;
    }
    Ok(DevTls { generated, ..tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
    }

    fn der_of(chain_pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn peer_certificates_name_their_node_and_servers_do_not() {
        let ca = Ca::generate("test CA", Validity::days_from(now(), 10)).unwrap();
        let peer = ca
            .issue(
                Kind::Peer,
                "node-1",
                &["10.0.0.1".into()],
                Validity::days_from(now(), 5),
            )
            .unwrap();
        assert_eq!(
            node_id_of(&der_of(&peer.chain_pem)).as_deref(),
            Some("node-1")
        );
        let server = ca
            .issue(
                Kind::Server,
                "localhost",
                &[],
                Validity::days_from(now(), 5),
            )
            .unwrap();
        assert_eq!(node_id_of(&der_of(&server.chain_pem)), None);
        assert!(node_id_of(b"not a certificate").is_none());
        assert!(peer.chain_pem.ends_with(ca.cert_pem()));
    }

    #[test]
    fn names_are_checked() {
        let ca = Ca::generate("test CA", Validity::days_from(now(), 10)).unwrap();
        for bad in ["", "Node", "-a", "a-", "a_b", &"n".repeat(64)] {
            assert!(
                matches!(
                    ca.issue(Kind::Peer, bad, &[], Validity::days_from(now(), 1)),
                    Err(CertError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(
            ca.issue(
                Kind::Server,
                "x",
                &["bad name".into()],
                Validity::days_from(now(), 1)
            )
            .is_err()
        );
    }

    #[test]
    fn files_are_private_and_never_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test CA", Validity::days_from(now(), 10)).unwrap();
        ca.write(dir.path(), false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            ca.write(dir.path(), false),
            Err(CertError::Exists { .. })
        ));
        ca.write(dir.path(), true).unwrap();
        let loaded = Ca::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        fs::write(dir.path().join("ca.key"), "garbage").unwrap();
        assert!(matches!(
            Ca::load(dir.path()),
            Err(CertError::BadPem { .. })
        ));
    }

    #[test]
    fn dev_tls_is_made_once_and_renewed_near_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_tls(dir.path(), now()).unwrap();
        assert!(first.generated);
        let cert = fs::read_to_string(&first.cert).unwrap();
        let again = ensure_dev_tls(dir.path(), now() + Duration::days(1)).unwrap();
        assert!(!again.generated);
        assert_eq!(fs::read_to_string(&again.cert).unwrap(), cert);
        // Within 30 days of the leaf's expiry it is reissued from the same CA.
        let ca = fs::read_to_string(&first.ca).unwrap();
        let later = ensure_dev_tls(dir.path(), now() + Duration::days(LEAF_DAYS - 10)).unwrap();
        assert!(later.generated);
        assert_ne!(fs::read_to_string(&later.cert).unwrap(), cert);
        assert_eq!(fs::read_to_string(&later.ca).unwrap(), ca);
    }
}
