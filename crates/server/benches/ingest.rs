//! Server throughput, end to end over TLS on loopback. The server is the real
//! `coffer-server` binary pinned to CPU 0; this client runs pinned to CPU 1,
//! so the figures are what one server core sustains (when `taskset` is
//! missing, both share the machine and the bench says so).
//!
//! - **chunk ingest**: 1 MiB chunks of a large upload, pipelined, verified
//!   (SHA-256) and stored durably (temp file, fsync, rename, directory fsync,
//!   and the receipt committed to the database) — MB/s;
//! - **small-file commits**: many clients each writing 4 KiB files (begin,
//!   chunk, commit), the writer batching their changes into shared
//!   transactions — files/s.
//!
//! `cargo bench -p coffer-server --bench ingest` (or `just bench`).

#![allow(clippy::print_stdout)] // a bench reports on stdout

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coffer_net::conn::{Connection, Timeouts};
use coffer_net::{Net, SystemClock, TokioNet, tls};
use coffer_proto::request::{
    FolderCreate, Hello, Login, Register, UploadBegin, UploadChunk, UploadCommit,
};
use coffer_proto::types::{Blob, FileId, Kdf, LoginSecret, Sha256};
use coffer_proto::{Frame, Limits, PROTOCOL_VERSION, Request, Response};
use rustls_pki_types::ServerName;
use sha2::Digest;

type Conn = Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, ca: &Path) -> Conn {
    let roots = tls::load_roots(ca).unwrap();
    let config = tls::client_config(roots, None, Arc::new(SystemClock)).unwrap();
    let tcp = TokioNet.connect(addr).await.unwrap();
    let stream = tls::connect(
        &tokio_rustls::TlsConnector::from(config),
        ServerName::try_from("localhost").unwrap(),
        tcp,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut conn = Connection::new(stream, Limits::default(), Timeouts::default());
    call(
        &mut conn,
        1,
        Request::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent: "bench".into(),
        }),
        Bytes::new(),
    )
    .await;
    conn
}

async fn call(conn: &mut Conn, id: u64, request: Request, body: Bytes) -> Frame<Response> {
    conn.send(&Frame::with_body(id, request, body))
        .await
        .unwrap();
    let answer = conn.recv::<Response>().await.unwrap().unwrap();
    assert!(
        !matches!(answer.msg, Response::Error(_)),
        "{:?}",
        answer.msg
    );
    answer
}

fn secret(name: &str) -> LoginSecret {
    LoginSecret(Sha256(sha2::Sha256::digest(name.as_bytes()).into()))
}

async fn signed_in(addr: SocketAddr, ca: &Path, name: &str, register: bool) -> Conn {
    let mut conn = connect(addr, ca).await;
    if register {
        let kdf = Kdf {
            alg: "argon2id".into(),
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
            salt: Blob(vec![0; 16]),
        };
        call(
            &mut conn,
            2,
            Request::Register(Register {
                username: name.into(),
                login_secret: secret(name),
                public_key: Blob(vec![1; 294]),
                wrapped_private_key: Blob(vec![2; 1300]),
                kdf,
            }),
            Bytes::new(),
        )
        .await;
    }
    call(
        &mut conn,
        3,
        Request::Login(Login {
            username: name.into(),
            login_secret: secret(name),
            device_id: None,
        }),
        Bytes::new(),
    )
    .await;
    conn
}

fn begin(
    folder_id: &str,
    path: &str,
    chunks: &[Vec<u8>],
    chunk_size: u32,
    size: u64,
) -> (Request, Bytes) {
    let list: Vec<u8> = chunks.iter().flat_map(sha2::Sha256::digest).collect();
    let request = Request::UploadBegin(UploadBegin {
        folder_id: folder_id.into(),
        path: path.into(),
        file_id: FileId(
            sha2::Sha256::digest(path.as_bytes())[..16]
                .try_into()
                .unwrap(),
        ),
        size,
        chunk_size,
        chunk_count: chunks.len() as u32,
        epoch: 1,
        wrapped_file_key: Blob(vec![3; 81]),
        meta: Blob(vec![4; 120]),
        base: None,
        commit: false,
        upload_id: None,
    });
    (request, Bytes::from(list))
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Streams one file of `count` 1 MiB chunks without waiting for acknowledgments
/// (the server stores a few at a time and paces the rest); returns MB/s from
/// first chunk sent to last acknowledged.
async fn ingest(addr: SocketAddr, ca: &Path, folder_id: &str, file: &str, count: usize) -> f64 {
    let chunk_size = 1u32 << 20;
    let chunks: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            pseudo_random(
                chunk_size as usize + 49,
                i as u64 + file.len() as u64 * 1000,
            )
        })
        .collect();
    let mut conn = signed_in(addr, ca, "bench", false).await;
    let (request, list) = begin(
        folder_id,
        file,
        &chunks,
        chunk_size,
        count as u64 * chunk_size as u64,
    );
    let Response::Upload(upload) = call(&mut conn, 10, request, list).await.msg else {
        panic!()
    };
    let (mut reader, mut writer) = conn.into_split();
    let started = Instant::now();
    let bodies: Vec<Bytes> = chunks.into_iter().map(Bytes::from).collect();
    let hashes: Vec<Sha256> = bodies
        .iter()
        .map(|b| Sha256(sha2::Sha256::digest(b).into()))
        .collect();
    let upload_id = upload.upload_id.clone();
    let sender = tokio::spawn(async move {
        for (i, (body, hash)) in bodies.into_iter().zip(hashes).enumerate() {
            let frame = Frame::with_body(
                100 + i as u64,
                Request::UploadChunk(UploadChunk {
                    upload_id: upload_id.clone(),
                    index: i as u32,
                    sha256: hash,
                    md5: None,
                }),
                body,
            );
            writer.send(&frame).await.unwrap();
        }
        writer
    });
    for _ in 0..count {
        let answer = reader.recv::<Response>().await.unwrap().unwrap();
        assert!(
            matches!(answer.msg, Response::ChunkAck(_)),
            "{:?}",
            answer.msg
        );
    }
    let elapsed = started.elapsed();
    let mut writer = sender.await.unwrap();
    writer
        .send(&Frame::new(
            99_999,
            Request::UploadCommit(UploadCommit {
                upload_id: upload.upload_id,
                meta: None,
            }),
        ))
        .await
        .unwrap();
    let committed = reader.recv::<Response>().await.unwrap().unwrap();
    assert!(
        matches!(committed.msg, Response::Entry(_)),
        "{:?}",
        committed.msg
    );
    (count as f64 * f64::from(chunk_size)) / elapsed.as_secs_f64() / 1e6
}

/// `clients` connections each commit `files` 4 KiB files — in one request each
/// when `inline`, else as begin, chunk, commit; returns files/s.
async fn small_files(
    addr: SocketAddr,
    ca: &Path,
    folder_id: &str,
    clients: usize,
    files: usize,
    inline: bool,
) -> f64 {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(signed_in(addr, ca, "bench", false).await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let folder_id = folder_id.to_owned();
        tasks.push(tokio::spawn(async move {
            for f in 0..files {
                let seed = (c * 100_000 + f) as u64 + u64::from(inline) * 1_000_000;
                let chunk = pseudo_random(4096 + 49, seed);
                let path = format!("small-{inline}/{c}/{f}.txt");
                let chunks = vec![chunk];
                let (mut request, list) = begin(&folder_id, &path, &chunks, 65_536, 4096);
                if inline {
                    if let Request::UploadBegin(b) = &mut request {
                        b.commit = true;
                    }
                    let body = [&list[..], &chunks[0][..]].concat();
                    let answer = call(&mut conn, 1, request, Bytes::from(body)).await;
                    assert!(matches!(answer.msg, Response::Entry(_)));
                    continue;
                }
                let Response::Upload(upload) = call(&mut conn, 1, request, list).await.msg else {
                    panic!()
                };
                let hash = Sha256(sha2::Sha256::digest(&chunks[0]).into());
                let chunk = Request::UploadChunk(UploadChunk {
                    upload_id: upload.upload_id.clone(),
                    index: 0,
                    sha256: hash,
                    md5: None,
                });
                call(
                    &mut conn,
                    2,
                    chunk,
                    Bytes::from(chunks.into_iter().next().unwrap()),
                )
                .await;
                let commit = Request::UploadCommit(UploadCommit {
                    upload_id: upload.upload_id,
                    meta: None,
                });
                call(&mut conn, 3, commit, Bytes::new()).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (clients * files) as f64 / started.elapsed().as_secs_f64()
}

/// Pins this process to `cpu`; false when the machine has too few CPUs.
fn pin_self(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok()
        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok()
}

fn main() {
    let pinned = std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok()
        && std::thread::available_parallelism().map_or(0, |n| n.get()) >= 2
        && pin_self(1);
    // A disk-backed directory, as a server would have (not tmpfs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let binary = env!("CARGO_BIN_EXE_coffer-server");
    let mut args: Vec<String> = Vec::new();
    let program = if pinned {
        args.extend(["-c".into(), "0".into(), binary.into()]);
        "taskset"
    } else {
        binary
    };
    args.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--bcrypt-cost",
            "4",
            "--data",
            dir.path().to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let server = coffer_conformance::Process::start(Path::new(program), args).unwrap();
    let addr = server.addr();
    let ca = dir.path().join("tls/ca.pem");
    println!(
        "{}",
        if pinned {
            "server pinned to CPU 0, client to CPU 1"
        } else {
            "NOT PINNED: server and client share every CPU"
        }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut admin = signed_in(addr, &ca, "bench", true).await;
        let Response::Folder(folder) = call(
            &mut admin,
            4,
            Request::FolderCreate(FolderCreate {
                label: "bench".into(),
                wrapped_key: Blob(vec![5; 256]),
                write_id: None,
            }),
            Bytes::new(),
        )
        .await
        .msg
        else {
            panic!()
        };

        // `-- ingest` or `-- small` runs one half (cargo passes `--bench` too).
        let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
        let wants = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
        if wants("ingest") {
            let one = ingest(addr, &ca, &folder.folder_id, "one.bin", 256).await;
            println!("chunk ingest, 1 connection, 256 x 1 MiB: {one:.0} MB/s");
            let (a, b) = tokio::join!(
                ingest(addr, &ca, &folder.folder_id, "two-a.bin", 128),
                ingest(addr, &ca, &folder.folder_id, "two-b.bin", 128),
            );
            println!("chunk ingest, 2 connections, 2 x 128 x 1 MiB: {:.0} MB/s", a + b);
        }
        if wants("small") {
            let rate = small_files(addr, &ca, &folder.folder_id, 32, 100, false).await;
            println!("small-file commits, 32 clients x 100 x 4 KiB, begin + chunk + commit: {rate:.0} files/s");
            let rate = small_files(addr, &ca, &folder.folder_id, 32, 100, true).await;
            println!("small-file commits, 32 clients x 100 x 4 KiB, one request each: {rate:.0} files/s");
        }
    });
    drop(server);
}
