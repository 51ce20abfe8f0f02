//! Scenario 6: bad input against the live binaries — random bytes, an
//! oversized frame, slowloris, path traversal names, a flood of failed logins —
//! after which the server and the balancer still serve everyone else.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::cluster::{Cluster, Probe};
use crate::device::Device;
use crate::scenario::{Context as _, Failure, Tally, content, write_file};

/// Whether the peer closed `s` (EOF or reset) within `deadline`, reading and
/// discarding whatever it sends before.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, deadline: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let drained = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, drained).await.is_ok()
}

async fn tls(
    ca: &Path,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let roots = coffer_net::tls::load_roots(ca).ctx("CA")?;
    let config = coffer_net::tls::client_config(roots, None, Arc::new(coffer_net::SystemClock))
        .ctx("TLS config")?;
    let tcp = TcpStream::connect(addr).await.ctx("connect")?;
    let name = ServerName::try_from("localhost").expect("valid");
    coffer_net::tls::connect(
        &tokio_rustls::TlsConnector::from(config),
        name,
        tcp,
        Duration::from_secs(5),
    )
    .await
    .ctx("TLS handshake")
}

/// Runs the scenario on a service cluster whose servers close silent
/// handshakes after 2 s and lock a user out after 5 failed logins.
pub async fn run(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    // The scenario before may have left a node catching up.
    crate::cluster::settle(cluster, crate::cluster::SETTLE).await?;
    let probe = Probe::new(cluster.ca()).ctx("probe")?;
    let server = cluster.server(0);
    let targets = [("server", server), ("balancer", cluster.front())];

    // Random bytes instead of a TLS handshake: closed, nothing else happens.
    for (who, addr) in targets {
        let mut s = TcpStream::connect(addr).await.ctx("connect")?;
        let _ = s.write_all(&content("noise", 64 * 1024)).await;
        t.ops(1);
        t.check(closed_within(&mut s, Duration::from_secs(15)).await, || {
            format!("the {who} kept a connection of random bytes open")
        })?;
    }

    // An oversized frame after a good handshake: a 4 GiB body announced.
    let mut s = tls(cluster.ca(), server).await?;
    let mut prefix = Vec::new();
    prefix.extend_from_slice(&64u32.to_be_bytes());
    prefix.extend_from_slice(&u32::MAX.to_be_bytes());
    prefix.extend_from_slice(&[b'x'; 64]);
    let _ = s.write_all(&prefix).await;
    let _ = s.flush().await;
    t.ops(1);
    t.check(closed_within(&mut s, Duration::from_secs(15)).await, || {
        "the server kept a connection that announced a 4 GiB frame".into()
    })?;
    // Garbage inside a well-formed frame: a typed error or a close, never a hang.
    let mut s = tls(cluster.ca(), server).await?;
    let junk = content("junk header", 200);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(junk.len() as u32).to_be_bytes());
    frame.extend_from_slice(&0u32.to_be_bytes());
    frame.extend_from_slice(&junk);
    let _ = s.write_all(&frame).await;
    let _ = s.flush().await;
    t.ops(1);
    t.check(closed_within(&mut s, Duration::from_secs(15)).await, || {
        "the server kept a connection that sent a junk header".into()
    })?;

    // Slowloris: 40 connections that dribble a well-formed ClientHello a
    // byte per 300 ms (a record of 512 bytes announced, so a TLS stack can
    // only wait for the rest). The handshake deadline closes them, and a
    // real user is served meanwhile.
    let mut slow = Vec::new();
    for _ in 0..40 {
        slow.push(TcpStream::connect(server).await.ctx("slow connect")?);
    }
    t.ops(40);
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.resize(30, 0x2a);
    let dribble = async {
        for byte in &hello {
            for s in &mut slow {
                let _ = s.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let meanwhile = async {
        let node = probe.ping(server).await.ctx("ping during slowloris")?;
        Ok::<_, Failure>(node)
    };
    let (_, served) = tokio::join!(dribble, meanwhile);
    served?;
    t.checks += 1;
    let mut closed = 0;
    for s in &mut slow {
        if closed_within(s, Duration::from_secs(5)).await {
            closed += 1;
        }
    }
    t.check(closed == slow.len(), || {
        format!(
            "only {closed} of {} slowloris connections were closed",
            slow.len()
        )
    })?;

    // Path traversal names are refused, and nothing lands outside the folder.
    let user = Device::new(dir, "bi-user", "main", cluster.front(), cluster.ca());
    user.enrol(true).await.ctx("register")?;
    let folder = user
        .create_folder("bad-input", None)
        .await
        .ctx("folder create")?;
    let file = dir.join("traversal.txt");
    write_file(&file, "traversal marker", 100)?;
    let file_s = file.display().to_string();
    for bad in [
        "../escape.txt",
        "a/../../escape.txt",
        "..",
        "a/./b.txt",
        "a//b.txt",
        "/",
        "a/..",
        "\\..\\escape.txt",
    ] {
        let r = user
            .run(&["put", &file_s, &format!("{folder}:{bad}")])
            .await;
        t.ops(1);
        t.check(r.is_err(), || format!("put to {bad:?} was accepted"))?;
    }
    let listing = user.json(&["ls", &folder, "--recursive"]).await.ctx("ls")?;
    t.check(listing.as_array().is_some_and(Vec::is_empty), || {
        format!("after refused names the folder holds {listing}")
    })?;
    let escaped = cluster.data_dir(0).parent().map(|p| p.join("escape.txt"));
    t.check(escaped.is_some_and(|p| !p.exists()), || {
        "a file escaped the data directory".into()
    })?;

    // A flood of failed logins through the balancer: the victim is locked
    // out, others are not. Each node counts the failures it sees (rate limits
    // stay on their node), so the flood goes on until as many refusals in a
    // row as there are servers — every node it reaches refuses — bounded at
    // ten attempts per node.
    let victim = Device::new(dir, "bi-victim", "main", cluster.front(), cluster.ca());
    victim.enrol(true).await.ctx("register victim")?;
    let attacker = Device::new(dir, "bi-victim", "attacker", cluster.front(), cluster.ca())
        .with_password("not the password at all");
    let mut codes = Vec::new();
    let n = cluster.servers();
    while codes.len() < 10 * n && !codes.ends_with(&vec!["rate_limited".to_owned(); n]) {
        let r = attacker
            .run(&["login", "bi-victim", "--device", "attacker"])
            .await;
        t.ops(1);
        codes.push(r.err().map(|e| e.code).unwrap_or_else(|| "ok".into()));
    }
    t.check(
        codes
            .iter()
            .all(|c| c == "unauthorized" || c == "rate_limited"),
        || format!("wrong-password logins answered {codes:?}"),
    )?;
    t.check(codes.ends_with(&vec!["rate_limited".to_owned(); n]), || {
        format!("the flood never engaged the limit: {codes:?}")
    })?;
    let bystander = Device::new(dir, "bi-user", "second", cluster.front(), cluster.ca());
    bystander
        .enrol(false)
        .await
        .ctx("a legitimate user logs in during the lockout")?;
    t.ops(1);
    t.checks += 1;

    // Both still serve.
    for (who, addr) in targets {
        probe
            .ping(addr)
            .await
            .ctx(&format!("the {who} after all this"))?;
        t.ops(1);
        t.checks += 1;
    }
    Ok(t)
}
