//! The `coffer-certs` command line, run as a user would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer-certs"))
        .args(args)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_server_and_peer_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = dir.path().join("out");
    let (ca_s, out_s) = (ca.to_str().unwrap(), out.to_str().unwrap());

    assert!(certs(&["ca", "--out", ca_s]).status.success());
    assert_eq!(mode(&ca.join("ca.key")), 0o600);

    let server = certs(&[
        "server",
        "--ca",
        ca_s,
        "--name",
        "web",
        "--san",
        "127.0.0.1",
        "--san",
        "web.local",
        "--out",
        out_s,
    ]);
    assert!(
        server.status.success(),
        "{}",
        String::from_utf8_lossy(&server.stderr)
    );
    assert_eq!(mode(&out.join("web.key")), 0o600);
    let chain = fs::read_to_string(out.join("web.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf then CA"
    );

    let peer = certs(&["peer", "--ca", ca_s, "--name", "node-2", "--out", out_s]);
    assert!(
        peer.status.success(),
        "{}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let der = x509_der(&fs::read_to_string(out.join("node-2.pem")).unwrap());
    assert_eq!(coffer_certs::node_id_of(&der).as_deref(), Some("node-2"));

    // Nothing is overwritten without --force, and the refusal says so.
    let again = certs(&["peer", "--ca", ca_s, "--name", "node-2", "--out", out_s]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(
        certs(&[
            "peer", "--ca", ca_s, "--name", "node-2", "--out", out_s, "--force"
        ])
        .status
        .success()
    );

    // A bad node id is refused with its reason.
    let bad = certs(&["peer", "--ca", ca_s, "--name", "Node_2", "--out", out_s]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("node id"));
}

fn x509_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
