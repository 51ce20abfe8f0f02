//! Server throughput, end to end over TLS on loopback, in-process:
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
use coffer_net::{Listener, Net, SystemClock, TokioNet, tls};
use coffer_proto::request::{
    FolderCreate, Hello, Login, Register, UploadBegin, UploadChunk, UploadRef,
};
use coffer_proto::types::{Blob, FileId, Kdf, LoginSecret, Sha256};
use coffer_proto::{Frame, Limits, PROTOCOL_VERSION, Request, Response};
use coffer_server::{Config, Server};
use rustls_pki_types::ServerName;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

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
    let list: Vec<u8> = chunks
        .iter()
        .flat_map(|c| sha2::Sha256::digest(c))
        .collect();
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
            Request::UploadCommit(UploadRef {
                upload_id: upload.upload_id,
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

/// `clients` connections each commit `files` 4 KiB files; returns files/s.
async fn small_files(
    addr: SocketAddr,
    ca: &Path,
    folder_id: &str,
    clients: usize,
    files: usize,
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
                let chunk = pseudo_random(4096 + 49, (c * 100_000 + f) as u64);
                let chunks = vec![chunk];
                let (request, list) = begin(
                    &folder_id,
                    &format!("small/{c}/{f}.txt"),
                    &chunks,
                    65_536,
                    4096,
                );
                let Response::Upload(upload) = call(&mut conn, 1, request, list).await.msg else {
                    panic!()
                };
                let hash = Sha256(sha2::Sha256::digest(&chunks[0]).into());
                call(
                    &mut conn,
                    2,
                    Request::UploadChunk(UploadChunk {
                        upload_id: upload.upload_id.clone(),
                        index: 0,
                        sha256: hash,
                        md5: None,
                    }),
                    Bytes::from(chunks.into_iter().next().unwrap()),
                )
                .await;
                call(
                    &mut conn,
                    3,
                    Request::UploadCommit(UploadRef {
                        upload_id: upload.upload_id,
                    }),
                    Bytes::new(),
                )
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (clients * files) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A disk-backed directory, as a server would have (not tmpfs).
        let dir = tempfile::tempdir_in(
            std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| ".".into()),
        )
        .unwrap();
        let config = Config {
            data: dir.path().to_owned(),
            bcrypt_cost: 4,
            ..Config::default()
        };
        let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
        let ca = server.ca_path().unwrap().to_owned();
        let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(listener, shutdown.clone()));

        let mut admin = signed_in(addr, &ca, "bench", true).await;
        let Response::Folder(folder) = call(
            &mut admin,
            4,
            Request::FolderCreate(FolderCreate {
                label: "bench".into(),
                wrapped_key: Blob(vec![5; 256]),
            }),
            Bytes::new(),
        )
        .await
        .msg
        else {
            panic!()
        };

        let one = ingest(addr, &ca, &folder.folder_id, "one.bin", 256).await;
        println!("chunk ingest, 1 connection, 256 x 1 MiB: {one:.0} MB/s");
        let (a, b) = tokio::join!(
            ingest(addr, &ca, &folder.folder_id, "two-a.bin", 128),
            ingest(addr, &ca, &folder.folder_id, "two-b.bin", 128),
        );
        println!(
            "chunk ingest, 2 connections, 2 x 128 x 1 MiB: {:.0} MB/s",
            a + b
        );
        let rate = small_files(addr, &ca, &folder.folder_id, 32, 100).await;
        println!("small-file commits, 32 clients x 100 files of 4 KiB: {rate:.0} files/s");
        shutdown.cancel();
    });
}
