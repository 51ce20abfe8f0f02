//! The harness: a server in-process on port 0 with a clock the test moves, and
//! a minimal client that speaks the protocol.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_crypto::{
    ChunkCipher, FileKey, FileKeyContext, FileMeta, FolderKey, KdfParams, UserKeys,
};
use coffer_net::conn::{Connection, Timeouts};
use coffer_net::{Clock, ManualClock, Net, SystemClock, TokioNet, tls};
use coffer_proto::request::{
    DeviceRegister, FolderCreate, Hello, Login, PathRef, Register, Stat, UploadBegin, UploadChunk,
    UploadCommit,
};
use coffer_proto::response::{ErrorBody, FolderInfo, Session};
use coffer_proto::types::{Blob, FileEntry, FileId, Kdf, LoginSecret, Sha256, VersionVector};
use coffer_proto::{ErrorCode, Event, Frame, Limits, PROTOCOL_VERSION, Request, Response};
use coffer_server::{Config, Server};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rustls_pki_types::ServerName;
use tokio_util::sync::CancellationToken;

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

pub struct Harness {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    pub clock: Arc<ManualClock>,
    pub data: PathBuf,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// A configuration for tests: cheap bcrypt, short hello deadline.
pub fn test_config(data: &Path) -> Config {
    Config {
        data: data.to_owned(),
        hello_timeout: Duration::from_secs(2),
        bcrypt_cost: 4,
        ..Config::default()
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        // Starts at the real time; the test moves it on.
        let clock = Arc::new(ManualClock::at_ms(SystemClock.now_ms()));
        Self::start_in(config, clock, Some(dir)).await
    }

    pub async fn start_in(
        config: Config,
        clock: Arc<ManualClock>,
        dir: Option<tempfile::TempDir>,
    ) -> Harness {
        let data = config.data.clone();
        let server = Arc::new(Server::new(config, clock.clone()).unwrap());
        let ca = server.ca_path().unwrap().to_owned();
        let shutdown = CancellationToken::new();
        let (addr, task) = server.spawn_local(shutdown.clone()).await.unwrap();
        Harness {
            addr,
            ca,
            clock,
            data,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// Stops the server and waits until it has.
    pub async fn stop(self) -> (Config, Arc<ManualClock>, Option<tempfile::TempDir>) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        (test_config(&self.data), self.clock, self._dir)
    }

    pub async fn connect(&self) -> Conn {
        Conn::open(self.addr, &self.ca).await
    }

    /// A new connection that has said hello.
    pub async fn client(&self) -> Client {
        let mut conn = self.connect().await;
        let welcome = conn.call(hello()).await;
        assert!(matches!(welcome, Response::Welcome(_)), "{welcome:?}");
        Client { conn, user: None }
    }

    /// Registers `name` (password "pw-<name>") and returns a signed-in client.
    pub async fn user(&self, name: &str) -> Client {
        let mut c = self.client().await;
        let identity = Identity::new(name);
        let registered = c.conn.call(identity.register()).await;
        assert!(
            matches!(registered, Response::Registered(_)),
            "{registered:?}"
        );
        c.login(identity).await;
        c
    }
}

pub fn hello() -> Request {
    Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent: "server-test".into(),
    })
}

/// A raw framed connection.
pub struct Conn {
    pub inner: Connection<Tls>,
    next_id: u64,
}

impl Conn {
    pub async fn open(addr: SocketAddr, ca: &Path) -> Conn {
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
        Conn {
            inner: Connection::new(stream, Limits::default(), Timeouts::default()),
            next_id: 1,
        }
    }

    pub async fn send(&mut self, request: Request, body: Bytes) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.inner
            .send(&Frame::with_body(id, request, body))
            .await
            .unwrap();
        id
    }

    /// The next response, skipping (and returning separately) pushed events.
    pub async fn answer(&mut self, id: u64) -> (Frame<Response>, Vec<Event>) {
        let mut events = Vec::new();
        loop {
            let raw = self.inner.read_frame().await.unwrap().expect("an answer");
            let header = coffer_proto::Header::parse(&raw.header).unwrap();
            if header.id == 0 && header.kind != "error" {
                events.push(Frame::<Event>::from_header(header, raw.body).unwrap().msg);
                continue;
            }
            let frame = Frame::<Response>::from_header(header, raw.body).unwrap();
            assert!(
                frame.id == id || frame.id == 0,
                "answer {} to request {id}",
                frame.id
            );
            return (frame, events);
        }
    }

    pub async fn call_with(&mut self, request: Request, body: Bytes) -> Frame<Response> {
        let id = self.send(request, body).await;
        self.answer(id).await.0
    }

    pub async fn call(&mut self, request: Request) -> Response {
        self.call_with(request, Bytes::new()).await.msg
    }

    /// The next pushed event.
    pub async fn event(&mut self) -> Event {
        let frame = tokio::time::timeout(Duration::from_secs(5), self.inner.recv::<Event>())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the connection is open");
        frame.msg
    }
}

/// A user's key material, made once per name and test.
pub struct Identity {
    pub name: String,
    pub password: String,
    pub keys: UserKeys,
    pub kdf: KdfParams,
}

impl Identity {
    pub fn new(name: &str) -> Identity {
        let mut rng = ChaCha20Rng::seed_from_u64(name.bytes().map(u64::from).sum());
        let keys = test_keys(name);
        Identity {
            name: name.to_owned(),
            password: format!("pw-{name}"),
            kdf: KdfParams::with_cost(&mut rng, 64, 1, 1),
            keys,
        }
    }

    pub fn secret(&self) -> LoginSecret {
        LoginSecret(Sha256(*coffer_crypto::login_secret(
            &self.name,
            &self.password,
        )))
    }

    pub fn register(&self) -> Request {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        Request::Register(Register {
            username: self.name.clone(),
            login_secret: self.secret(),
            public_key: Blob(self.keys.public().to_der()),
            wrapped_private_key: Blob(
                self.keys
                    .wrap(&mut rng, &self.name, &self.password, &self.kdf)
                    .unwrap(),
            ),
            kdf: Kdf {
                alg: KdfParams::ALG.into(),
                m_cost_kib: self.kdf.m_cost_kib,
                t_cost: self.kdf.t_cost,
                p_cost: self.kdf.p_cost,
                salt: Blob(self.kdf.salt.clone()),
            },
        })
    }
}

/// RSA keys are slow to make in a test: three are made once and shared by name.
fn test_keys(name: &str) -> UserKeys {
    use std::sync::OnceLock;
    static KEYS: OnceLock<Vec<UserKeys>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        (0..3)
            .map(|i| UserKeys::generate(&mut ChaCha20Rng::seed_from_u64(100 + i)))
            .collect()
    });
    keys[name.bytes().map(usize::from).sum::<usize>() % keys.len()].clone()
}

/// A signed-in client.
pub struct Client {
    pub conn: Conn,
    pub user: Option<(Identity, Session)>,
}

pub fn error(response: Response) -> ErrorBody {
    match response {
        Response::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

impl Client {
    pub async fn login(&mut self, identity: Identity) {
        let answer = self
            .conn
            .call(Request::Login(Login {
                username: identity.name.clone(),
                login_secret: identity.secret(),
                device_id: None,
            }))
            .await;
        let Response::Session(session) = answer else {
            panic!("{answer:?}")
        };
        self.user = Some((identity, session));
    }

    pub fn token(&self) -> coffer_proto::types::Token {
        self.user.as_ref().unwrap().1.token.clone()
    }

    pub async fn ok(&mut self, request: Request) -> Response {
        let answer = self.conn.call(request).await;
        assert!(!matches!(answer, Response::Error(_)), "{answer:?}");
        answer
    }

    pub async fn refused(&mut self, request: Request, code: ErrorCode) -> ErrorBody {
        let e = error(self.conn.call(request).await);
        assert_eq!(e.code, code, "{e:?}");
        e
    }

    pub async fn device(&mut self, name: &str, mac: &str) -> String {
        let answer = self
            .ok(Request::DeviceRegister(DeviceRegister {
                name: name.into(),
                mac: mac.into(),
                write_id: None,
            }))
            .await;
        let Response::Device(d) = answer else {
            panic!("{answer:?}")
        };
        d.device_id
    }

    /// Creates a folder with a fresh key wrapped for the caller.
    pub async fn folder(&mut self, label: &str) -> (FolderInfo, FolderKey) {
        let mut rng = ChaCha20Rng::seed_from_u64(label.len() as u64);
        let key = FolderKey::generate(&mut rng);
        let wrapped = self
            .user
            .as_ref()
            .unwrap()
            .0
            .keys
            .public()
            .wrap_folder_key(&mut rng, &key);
        let answer = self
            .ok(Request::FolderCreate(FolderCreate {
                label: label.into(),
                wrapped_key: Blob(wrapped),
                write_id: None,
            }))
            .await;
        let Response::Folder(f) = answer else {
            panic!("{answer:?}")
        };
        (f, key)
    }

    /// Begins an upload of `content`, sealed for real; returns the begin answer
    /// (upload or error), the sealed chunks and the begin request.
    pub async fn begin(&mut self, file: &TestFile<'_>) -> (Frame<Response>, Vec<Vec<u8>>) {
        let (request, chunks) = file.upload_request();
        let list: Vec<u8> = chunks
            .iter()
            .flat_map(|c| coffer_crypto::content_address(c))
            .collect();
        let answer = self.conn.call_with(request, Bytes::from(list)).await;
        (answer, chunks)
    }

    pub async fn send_chunk(&mut self, upload_id: &str, index: u32, chunk: &[u8]) -> Response {
        self.conn
            .call_with(
                Request::UploadChunk(UploadChunk {
                    upload_id: upload_id.into(),
                    index,
                    sha256: Sha256(coffer_crypto::content_address(chunk)),
                    md5: None,
                }),
                Bytes::copy_from_slice(chunk),
            )
            .await
            .msg
    }

    /// Uploads a small file in one request (`commit: true`).
    pub async fn put_inline(&mut self, file: &TestFile<'_>) -> Result<FileEntry, ErrorBody> {
        let (mut request, chunks) = file.upload_request();
        if let Request::UploadBegin(begin) = &mut request {
            begin.commit = true;
        }
        let mut body: Vec<u8> = chunks
            .iter()
            .flat_map(|c| coffer_crypto::content_address(c))
            .collect();
        for chunk in &chunks {
            body.extend_from_slice(chunk);
        }
        match self.conn.call_with(request, Bytes::from(body)).await.msg {
            Response::Entry(entry) => Ok(entry),
            other => Err(error(other)),
        }
    }

    /// Uploads a file completely and commits it; returns the committed entry.
    pub async fn put(&mut self, file: &TestFile<'_>) -> Result<FileEntry, ErrorBody> {
        let (answer, chunks) = self.begin(file).await;
        let Response::Upload(upload) = answer.msg else {
            return Err(error(answer.msg));
        };
        let missing = missing_list(upload.chunk_count, &answer.body);
        for i in missing {
            let r = self
                .send_chunk(&upload.upload_id, i, &chunks[i as usize])
                .await;
            if let Response::Error(e) = r {
                return Err(e);
            }
        }
        match self
            .conn
            .call(Request::UploadCommit(UploadCommit {
                upload_id: upload.upload_id,
                meta: None,
            }))
            .await
        {
            Response::Entry(entry) => Ok(entry),
            other => Err(error(other)),
        }
    }

    /// Downloads and decrypts the latest version of `path` with the folder key.
    pub async fn get(
        &mut self,
        folder_id: &str,
        path: &str,
        key: &FolderKey,
    ) -> Result<Vec<u8>, ErrorBody> {
        let answer = self
            .conn
            .call_with(
                Request::Download(Stat {
                    folder_id: folder_id.into(),
                    path: path.into(),
                    version: None,
                    inline: false,
                }),
                Bytes::new(),
            )
            .await;
        let Response::Manifest(manifest) = answer.msg else {
            return Err(error(answer.msg));
        };
        let entry = manifest.entry;
        let file_key = coffer_crypto::unwrap_file_key(
            key,
            FileKeyContext {
                folder_id,
                epoch: entry.epoch,
                file_id: entry.file_id.0,
            },
            entry.wrapped_file_key.as_bytes(),
        )
        .expect("the file key unwraps");
        let cipher = ChunkCipher::new(&file_key, entry.file_id.0);
        let mut plain = Vec::new();
        for (i, hash) in answer.body.chunks_exact(32).enumerate() {
            let chunk = self
                .conn
                .call_with(
                    Request::ChunkGet(coffer_proto::request::ChunkGet {
                        scope: coffer_proto::types::Scope::Folder(folder_id.into()),
                        hash: Sha256(hash.try_into().unwrap()),
                    }),
                    Bytes::new(),
                )
                .await;
            let Response::Chunk(_) = chunk.msg else {
                return Err(error(chunk.msg));
            };
            plain.extend(cipher.open(i as u32, &chunk.body).expect("the chunk opens"));
        }
        let meta = FileMeta::open(&file_key, entry.file_id.0, entry.meta.as_bytes()).unwrap();
        assert_eq!(
            meta.sha256,
            coffer_crypto::sha256(&plain),
            "plaintext checksum"
        );
        Ok(plain)
    }

    pub async fn mkdir(&mut self, folder_id: &str, path: &str) -> Response {
        self.conn
            .call(Request::Mkdir(PathRef {
                folder_id: folder_id.into(),
                path: path.into(),
            }))
            .await
    }
}

/// The indices set in a missing-chunks bitmap.
pub fn missing_list(count: u32, bitmap: &[u8]) -> Vec<u32> {
    (0..count)
        .filter(|i| bitmap[*i as usize / 8] & (1 << (i % 8)) != 0)
        .collect()
}

/// A file to upload.
pub struct TestFile<'a> {
    pub folder_id: &'a str,
    pub path: &'a str,
    pub content: &'a [u8],
    pub key: &'a FolderKey,
    pub epoch: u64,
    pub file_id: [u8; 16],
    pub base: Option<VersionVector>,
    pub chunk_size: u32,
    /// The client's id for the upload; `None`: the server picks one.
    pub upload_id: Option<String>,
}

impl<'a> TestFile<'a> {
    pub fn new(folder_id: &'a str, path: &'a str, content: &'a [u8], key: &'a FolderKey) -> Self {
        TestFile {
            folder_id,
            path,
            content,
            key,
            epoch: 1,
            file_id: file_id_for(path),
            base: None,
            chunk_size: coffer_proto::limits::MIN_CHUNK_SIZE,
            upload_id: None,
        }
    }

    /// The request and sealed chunks (deterministic: the same file seals the same way).
    pub fn upload_request(&self) -> (Request, Vec<Vec<u8>>) {
        let mut rng = ChaCha20Rng::seed_from_u64(self.content.len() as u64 ^ self.epoch);
        let file_key = FileKey::generate(&mut rng);
        let cipher = ChunkCipher::new(&file_key, self.file_id);
        let chunks: Vec<Vec<u8>> = self
            .content
            .chunks(self.chunk_size as usize)
            .enumerate()
            .map(|(i, c)| cipher.seal(&mut rng, i as u32, c))
            .collect();
        let ctx = FileKeyContext {
            folder_id: self.folder_id,
            epoch: self.epoch,
            file_id: self.file_id,
        };
        let wrapped = coffer_crypto::wrap_file_key(&mut rng, self.key, ctx, &file_key);
        let meta = FileMeta {
            sha256: coffer_crypto::sha256(self.content),
            size: self.content.len() as u64,
            mtime_ms: 0,
            mode: 0o644,
            name: String::new(),
        }
        .seal(&mut rng, &file_key, self.file_id);
        let request = Request::UploadBegin(UploadBegin {
            folder_id: self.folder_id.into(),
            path: self.path.into(),
            file_id: FileId(self.file_id),
            size: self.content.len() as u64,
            chunk_size: self.chunk_size,
            chunk_count: chunks.len() as u32,
            epoch: self.epoch,
            wrapped_file_key: Blob(wrapped),
            meta: Blob(meta),
            base: self.base.clone(),
            commit: false,
            upload_id: self.upload_id.clone(),
        });
        (request, chunks)
    }
}

/// A stable 16-byte file id from a path.
pub fn file_id_for(path: &str) -> [u8; 16] {
    coffer_crypto::sha256(path.as_bytes())[..16]
        .try_into()
        .unwrap()
}

/// Bytes of a given length that differ by seed.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
