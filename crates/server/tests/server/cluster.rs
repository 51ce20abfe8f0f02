//! Three servers on loopback, each with its own database and a peer
//! certificate from one CA, following each other's change logs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_certs::{Ca, Kind, Validity};
use coffer_net::{Listener as _, Net as _, SystemClock, TokioNet};
use coffer_proto::peer::{PeerHello, PeerMessage};
use coffer_proto::request::Login;
use coffer_proto::{Frame, Request, Response};
use coffer_server::{Config, Server};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::support::{Conn, Identity, hello, test_config};

struct Node {
    addr: SocketAddr,
    config: Config,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    server: Arc<Server>,
}

struct Cluster {
    dir: tempfile::TempDir,
    ca: Ca,
    nodes: Vec<Node>,
}

fn ca_file(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate(
            "Coffer test CA",
            Validity::days_from(OffsetDateTime::now_utc(), 2),
        )
        .unwrap();
        std::fs::write(ca_file(dir.path()), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("secret"), [7u8; 32]).unwrap();
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(
                TokioNet
                    .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .unwrap(),
            );
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = format!("node-{}", i + 1);
            let peer = ca
                .issue(
                    Kind::Peer,
                    &id,
                    &["localhost".to_owned()],
                    Validity::days_from(OffsetDateTime::now_utc(), 2),
                )
                .unwrap();
            let (cert, key) = peer.write(dir.path(), &id, false).unwrap();
            let config = Config {
                listen: addrs[i],
                node_id: id,
                tls_cert: Some(cert),
                tls_key: Some(key),
                ca: Some(ca_file(dir.path())),
                cluster_secret_file: Some(dir.path().join("secret")),
                admin: Some("root".into()),
                quorum_timeout: Duration::from_secs(1),
                peers: (0..n)
                    .filter(|&j| j != i)
                    .map(|j| (format!("node-{}", j + 1), addrs[j]))
                    .collect(),
                ..test_config(&dir.path().join(format!("data-{}", i + 1)))
            };
            nodes.push(Node::run(config, listener));
        }
        let cluster = Cluster { dir, ca, nodes };
        cluster.linked().await;
        cluster
    }

    /// Waits until every running node has a link to every other and is ready.
    async fn linked(&self) {
        for _ in 0..500 {
            if self
                .nodes
                .iter()
                .all(|n| n.server.linked_peers().len() == self.nodes.len() - 1 && n.server.ready())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the nodes did not link up within 10 s");
    }

    /// Brings a stopped node back and waits until the cluster is whole again.
    async fn rejoin(&mut self, config: Config) {
        self.nodes.push(Node::restart(config).await);
        self.linked().await;
        self.converged().await;
    }

    /// A client of `node`, signed in as `name`.
    async fn signed_in(&self, node: usize, name: &str) -> super::support::Client {
        let mut client = super::support::Client {
            conn: self.client(node).await,
            user: None,
        };
        client.login(Identity::new(name)).await;
        client
    }

    fn ca(&self) -> PathBuf {
        ca_file(self.dir.path())
    }

    async fn client(&self, node: usize) -> Conn {
        let mut conn = Conn::open(self.nodes[node].addr, &self.ca()).await;
        let welcome = conn.call(hello()).await;
        assert!(matches!(welcome, Response::Welcome(_)), "{welcome:?}");
        conn
    }

    /// Waits until every running node has the same replicated state.
    async fn converged(&self) {
        for _ in 0..500 {
            let mut digests = Vec::new();
            for node in &self.nodes {
                digests.push(node.server.replica_digest().await.unwrap());
            }
            if digests.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the nodes did not converge within 10 s");
    }
}

impl Node {
    fn run(config: Config, listener: coffer_net::TokioListener) -> Node {
        let server = Arc::new(Server::new(config.clone(), Arc::new(SystemClock)).unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.clone().run(TokioNet, listener, shutdown.clone()));
        Node {
            addr: config.listen,
            config,
            shutdown,
            task,
            server,
        }
    }

    async fn stop(self) -> Config {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.config
    }

    async fn restart(config: Config) -> Node {
        let listener = TokioNet.bind(config.listen).await.unwrap();
        Node::run(config, listener)
    }
}

async fn login(conn: &mut Conn, who: &Identity) -> Response {
    conn.call(Request::Login(Login {
        username: who.name.clone(),
        login_secret: who.secret(),
        device_id: None,
    }))
    .await
}

async fn register(cluster: &Cluster, node: usize, who: &Identity) {
    let mut conn = cluster.client(node).await;
    let answer = conn.call(who.register()).await;
    assert!(matches!(answer, Response::Registered(_)), "{answer:?}");
}

#[tokio::test]
async fn an_account_made_on_one_node_signs_in_on_every_other() {
    let cluster = Cluster::start(3).await;
    let alice = Identity::new("alice");
    register(&cluster, 0, &alice).await;
    cluster.converged().await;
    for node in 0..3 {
        let mut conn = cluster.client(node).await;
        let answer = login(&mut conn, &alice).await;
        assert!(
            matches!(answer, Response::Session(_)),
            "node {node}: {answer:?}"
        );
    }
    // A session opened on one node is a session on the others: its token
    // (signed with the shared secret) and its row both travelled.
    cluster.converged().await;
}

#[tokio::test]
async fn a_node_that_was_down_or_wiped_catches_up_from_its_peers() {
    let mut cluster = Cluster::start(3).await;
    register(&cluster, 0, &Identity::new("alice")).await;
    // A record of the third node's own, which it must get back once wiped.
    let own = Identity::new(&name_owned_by(&cluster, "node-3", "own"));
    register(&cluster, 2, &own).await;
    cluster.converged().await;
    let third = cluster.nodes.pop().unwrap().stop().await;
    register(&cluster, 1, &Identity::new("bob")).await;
    cluster.converged().await;
    // Back with its database: it follows from where it stopped.
    cluster.rejoin(third).await;
    let mut conn = cluster.client(2).await;
    let bob = Identity::new("bob");
    assert!(matches!(login(&mut conn, &bob).await, Response::Session(_)));
    // Back with nothing: it rebuilds everything, its own records included,
    // and refuses requests until it has.
    let third = cluster.nodes.pop().unwrap().stop().await;
    std::fs::remove_dir_all(&third.data).unwrap();
    cluster.rejoin(third).await;
    let mut conn = cluster.client(2).await;
    for who in [Identity::new("alice"), own] {
        let answer = login(&mut conn, &who).await;
        assert!(matches!(answer, Response::Session(_)), "{answer:?}");
    }
    // Its next records follow on from those it got back rather than reuse
    // their numbers: the cluster still converges.
    let after = Identity::new(&name_owned_by(&cluster, "node-3", "after"));
    register(&cluster, 2, &after).await;
    cluster.converged().await;
}

type Link = coffer_net::conn::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a TLS connection to the first node presenting `identity` (a chain
/// and key written under the cluster's directory) and says `peer_hello` as
/// `claims`, holding nothing.
async fn open_link(cluster: &Cluster, identity: Option<(&str, Kind)>, claims: &str) -> Link {
    open_link_to(cluster, 0, identity, claims).await
}

/// [`open_link`] to the node at `node` in `cluster.nodes`.
async fn open_link_to(
    cluster: &Cluster,
    node: usize,
    identity: Option<(&str, Kind)>,
    claims: &str,
) -> Link {
    use coffer_net::tls;
    let roots = tls::load_roots(&cluster.ca()).unwrap();
    let id = match identity {
        Some((name, kind)) => {
            let issued = cluster
                .ca
                .issue(
                    kind,
                    name,
                    &[],
                    Validity::days_from(OffsetDateTime::now_utc(), 2),
                )
                .unwrap();
            let (cert, key) = issued
                .write(&cluster.dir.path().join("others"), name, true)
                .unwrap();
            Some(tls::Identity::load(&cert, &key).unwrap())
        }
        None => None,
    };
    let config = tls::client_config(roots, id.as_ref(), Arc::new(SystemClock)).unwrap();
    let tcp = TokioNet.connect(cluster.nodes[node].addr).await.unwrap();
    let stream = tls::connect(
        &tokio_rustls::TlsConnector::from(config),
        rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        tcp,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut conn = coffer_net::conn::Connection::new(
        stream,
        coffer_proto::Limits::default(),
        coffer_net::conn::Timeouts::default(),
    );
    conn.send(&Frame::new(
        1,
        PeerMessage::PeerHello(PeerHello {
            protocol: coffer_proto::PROTOCOL_VERSION,
            node_id: claims.to_owned(),
            cursors: Default::default(),
        }),
    ))
    .await
    .unwrap();
    conn
}

/// The header of the first node's answer to [`open_link`].
async fn peer_hello(cluster: &Cluster, identity: Option<(&str, Kind)>, claims: &str) -> Vec<u8> {
    let mut conn = open_link(cluster, identity, claims).await;
    let raw = conn.read_frame().await.unwrap().unwrap();
    raw.header.to_vec()
}

#[tokio::test]
async fn only_a_member_with_its_own_certificate_opens_a_peer_link() {
    let cluster = Cluster::start(2).await;
    let answer = |header: Vec<u8>| String::from_utf8(header).unwrap();
    // The member, as itself: welcomed.
    let welcome = answer(peer_hello(&cluster, Some(("node-2", Kind::Peer)), "node-2").await);
    assert!(welcome.contains("peer_welcome"), "{welcome}");
    // A member's certificate claiming another member: refused.
    let other = answer(peer_hello(&cluster, Some(("node-2", Kind::Peer)), "node-1").await);
    assert!(other.contains("peer_error"), "{other}");
    // A node the cluster does not list: refused.
    let stranger = answer(peer_hello(&cluster, Some(("node-9", Kind::Peer)), "node-9").await);
    assert!(
        stranger.contains("peer_error") && stranger.contains("not a peer"),
        "{stranger}"
    );
    // No certificate: a client, for whom peer_hello is not a request.
    let client = answer(peer_hello(&cluster, None, "node-2").await);
    assert!(
        client.contains("\"type\":\"error\"") && client.contains("unknown message type"),
        "{client}"
    );
}

/// A name owned by `node` (an id), found by asking the membership.
fn name_owned_by(cluster: &Cluster, node: &str, prefix: &str) -> String {
    let membership = cluster.nodes[0].config.membership().unwrap();
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| membership.owner(name) == node)
        .unwrap()
}

#[tokio::test]
async fn each_name_is_registered_by_its_owner_whichever_node_is_asked() {
    let mut cluster = Cluster::start(3).await;
    // Names owned by each node, all asked of the first.
    let names: Vec<String> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|node| name_owned_by(&cluster, node, "user"))
        .collect();
    for name in &names {
        register(&cluster, 0, &Identity::new(name)).await;
    }
    // The same name asked of two nodes at once: one account, one refusal.
    let contested = Identity::new(&name_owned_by(&cluster, "node-1", "both"));
    let (mut second, mut third) = (cluster.client(1).await, cluster.client(2).await);
    let (a, b) = tokio::join!(
        second.call(contested.register()),
        third.call(contested.register())
    );
    let answers = [a, b];
    assert_eq!(
        answers
            .iter()
            .filter(|r| matches!(r, Response::Registered(_)))
            .count(),
        1,
        "{answers:?}"
    );
    assert!(answers.iter().any(|r| matches!(
        r,
        Response::Error(e) if e.code == coffer_proto::ErrorCode::Conflict
    )));
    cluster.converged().await;
    for node in 0..3 {
        for name in &names {
            let mut conn = cluster.client(node).await;
            let answer = login(&mut conn, &Identity::new(name)).await;
            assert!(
                matches!(answer, Response::Session(_)),
                "{name} on {node}: {answer:?}"
            );
        }
    }
    // With its owner down, a name cannot be registered; others still can.
    cluster.nodes.pop().unwrap().stop().await;
    let orphan = Identity::new(&name_owned_by(&cluster, "node-3", "late"));
    let mut conn = cluster.client(0).await;
    match conn.call(orphan.register()).await {
        Response::Error(e) => assert_eq!(e.code, coffer_proto::ErrorCode::Unavailable, "{e:?}"),
        other => panic!("{other:?}"),
    }
    register(
        &cluster,
        0,
        &Identity::new(&name_owned_by(&cluster, "node-2", "late")),
    )
    .await;
}

#[tokio::test]
async fn a_subscriber_on_one_node_hears_of_what_is_done_on_another() {
    use coffer_proto::request::{FolderShare, Subscribe};
    use coffer_proto::types::{Blob, EpochKey, Role};
    use coffer_proto::{Event, Request};

    use super::support::Client;

    let cluster = Cluster::start(3).await;
    let (alice, bob) = (Identity::new("alice"), Identity::new("bob"));
    register(&cluster, 0, &alice).await;
    register(&cluster, 0, &bob).await;
    cluster.converged().await;
    let mut bob_on_1 = Client {
        conn: cluster.client(0).await,
        user: None,
    };
    bob_on_1.login(bob).await;
    bob_on_1
        .ok(Request::Subscribe(Subscribe { cursor: None }))
        .await;
    while !matches!(bob_on_1.conn.event().await, Event::CaughtUp(_)) {}
    let mut alice_on_2 = Client {
        conn: cluster.client(1).await,
        user: None,
    };
    alice_on_2.login(alice).await;
    let (folder, _) = alice_on_2.folder("team").await;
    alice_on_2
        .ok(Request::FolderShare(FolderShare {
            folder_id: folder.folder_id.clone(),
            username: "bob".into(),
            role: Role::Editor,
            keys: vec![EpochKey {
                epoch: 1,
                wrapped_key: Blob(vec![1; 256]),
            }],
        }))
        .await;
    let event = tokio::time::timeout(Duration::from_secs(10), bob_on_1.conn.event())
        .await
        .expect("the invitation reaches the subscriber on the other node");
    let cursor = match event {
        Event::Invited(invited) => {
            assert_eq!(invited.invite.folder_id, folder.folder_id);
            invited.cursor
        }
        other => panic!("{other:?}"),
    };
    // Event numbers are each node's own: its cursor means nothing to another
    // node, which says so rather than skip or repeat events.
    let mut bob_on_3 = cluster.signed_in(2, "bob").await;
    let refused = bob_on_3
        .refused(
            Request::Subscribe(Subscribe {
                cursor: Some(cursor.clone()),
            }),
            coffer_proto::ErrorCode::BadRequest,
        )
        .await;
    assert!(refused.message.contains("another server"), "{refused:?}");
    bob_on_1
        .ok(Request::Subscribe(Subscribe {
            cursor: Some(cursor),
        }))
        .await;
}

async fn pong(cluster: &Cluster, node: usize) -> coffer_proto::response::Pong {
    let mut conn = cluster.client(node).await;
    match conn.call(Request::Ping).await {
        Response::Pong(pong) => pong,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_node_is_ready_once_caught_up_and_ping_tells_how_each_peer_stands() {
    let mut cluster = Cluster::start(3).await;
    cluster.converged().await;
    let first = pong(&cluster, 0).await;
    assert!(first.ready, "{first:?}");
    assert_eq!(first.peers.len(), 2);
    assert!(
        first.peers.values().all(|p| p.linked && p.caught_up),
        "{first:?}"
    );
    // A peer that is down falls behind, and says so.
    let third = cluster.nodes.pop().unwrap().stop().await;
    let name = name_owned_by(&cluster, "node-1", "user");
    register(&cluster, 0, &Identity::new(&name)).await;
    let mut behind = None;
    for _ in 0..500 {
        let now = pong(&cluster, 0).await;
        let lag = now.peers["node-3"].clone();
        if !lag.linked && lag.behind_records > 0 {
            behind = Some(lag);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(behind.is_some(), "node-3 never showed as behind");
    // A node that comes back while no peer is reachable is not ready…
    let second = cluster.nodes.pop().unwrap().stop().await;
    let first = cluster.nodes.pop().unwrap().stop().await;
    cluster.nodes.push(Node::restart(first).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pong(&cluster, 0).await.ready);
    // …until it has caught up with enough of them (one of two, with a
    // write quorum of two).
    cluster.nodes.push(Node::restart(second).await);
    for _ in 0..500 {
        if pong(&cluster, 0).await.ready {
            cluster.nodes.push(Node::restart(third).await);
            cluster.converged().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node-1 never became ready");
}

#[tokio::test]
async fn a_file_uploaded_through_one_node_downloads_through_another() {
    use super::support::{TestFile, content};

    let cluster = Cluster::start(3).await;
    let alice = Identity::new("alice");
    register(&cluster, 0, &alice).await;
    cluster.converged().await;
    let mut on_first = cluster.signed_in(0, "alice").await;
    let (folder, key) = on_first.folder("team").await;
    // Three chunks of the smallest size, and a bit.
    let bytes = content(3 * 65_536 + 100, 7);
    on_first
        .put(&TestFile::new(&folder.folder_id, "big.bin", &bytes, &key))
        .await
        .unwrap();
    cluster.converged().await;
    for node in [1, 2] {
        let mut other = cluster.signed_in(node, "alice").await;
        // The version is here; its chunks come from the node that has them.
        let back = other.get(&folder.folder_id, "big.bin", &key).await.unwrap();
        assert_eq!(back, bytes, "node {node}");
    }
}

#[tokio::test]
async fn a_write_is_acknowledged_only_once_on_two_nodes() {
    let mut cluster = Cluster::start(3).await;
    let first = name_owned_by(&cluster, "node-1", "first");
    register(&cluster, 0, &Identity::new(&first)).await;
    cluster.converged().await;
    // Alone, the first node still takes the write, but cannot say it is safe.
    let third = cluster.nodes.pop().unwrap().stop().await;
    let second = cluster.nodes.pop().unwrap().stop().await;
    let alone = Identity::new(&name_owned_by(&cluster, "node-1", "alone"));
    let mut conn = cluster.client(0).await;
    match conn.call(alone.register()).await {
        Response::Error(e) => {
            assert_eq!(e.code, coffer_proto::ErrorCode::Unavailable, "{e:?}");
            assert!(e.message.contains("fewer than 1 other"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // Once a peer is back, the write reaches it, and new ones are acknowledged.
    cluster.rejoin(second).await;
    let mut conn = cluster.client(1).await;
    assert!(matches!(
        login(&mut conn, &alone).await,
        Response::Session(_)
    ));
    register(
        &cluster,
        0,
        &Identity::new(&name_owned_by(&cluster, "node-1", "back")),
    )
    .await;
    cluster.nodes.push(Node::restart(third).await);
    cluster.converged().await;
}

/// An account the node `owner` owns (so that it outlives any other node),
/// registered and signed in through the first node, with a folder "team":
/// its name, the client, the folder and the folder's key.
async fn team_on_first(
    cluster: &Cluster,
    owner: &str,
) -> (
    String,
    super::support::Client,
    coffer_proto::response::FolderInfo,
    coffer_crypto::FolderKey,
) {
    let name = name_owned_by(cluster, owner, "user");
    register(cluster, 0, &Identity::new(&name)).await;
    cluster.converged().await;
    let mut on_first = cluster.signed_in(0, &name).await;
    let (folder, key) = on_first.folder("team").await;
    (name, on_first, folder, key)
}

#[tokio::test]
async fn an_acknowledged_upload_survives_the_loss_of_the_node_that_took_it() {
    use super::support::{TestFile, content};

    let mut cluster = Cluster::start(3).await;
    // An account the first node does not own, so that it is not lost with it.
    let (name, mut on_first, folder, key) = team_on_first(&cluster, "node-2").await;
    let bytes = content(2 * 65_536 + 7, 9);
    on_first
        .put(&TestFile::new(&folder.folder_id, "kept.bin", &bytes, &key))
        .await
        .unwrap();
    drop(on_first);
    // Acknowledged: at least one other node holds the version and its chunks.
    // The first node is then lost for good, data and all.
    let first = cluster.nodes.remove(0).stop().await;
    std::fs::remove_dir_all(&first.data).unwrap();
    for node in 0..2 {
        let mut other = cluster.signed_in(node, &name).await;
        let back = other
            .get(&folder.folder_id, "kept.bin", &key)
            .await
            .unwrap();
        assert_eq!(back, bytes, "node {}", node + 2);
    }
}

#[tokio::test]
async fn an_upload_begun_again_through_another_node_makes_one_version() {
    use super::support::{TestFile, content};

    let mut cluster = Cluster::start(3).await;
    let (name, mut on_first, folder, key) = team_on_first(&cluster, "node-1").await;
    cluster.converged().await;
    // Alone, the first node takes the upload but cannot say it is safe.
    let third = cluster.nodes.pop().unwrap().stop().await;
    let second = cluster.nodes.pop().unwrap().stop().await;
    let bytes = content(2 * 65_536 + 5, 3);
    let mut file = TestFile::new(&folder.folder_id, "once.bin", &bytes, &key);
    file.upload_id = Some(coffer_proto::request::upload_id([5; 16]));
    let refused = on_first.put(&file).await.unwrap_err();
    assert_eq!(
        refused.code,
        coffer_proto::ErrorCode::Unavailable,
        "{refused:?}"
    );
    // Asked again there, it still cannot: a repeated answer is no more
    // durable than the first.
    let (retried, _) = on_first.begin(&file).await;
    assert!(
        matches!(&retried.msg, Response::Error(e) if e.code == coffer_proto::ErrorCode::Unavailable),
        "{:?}",
        retried.msg
    );
    // The client tries again, under the same id, through the second node once
    // it is back; the first node's version has reached it meanwhile.
    cluster.rejoin(second).await;
    let mut on_second = cluster.signed_in(1, &name).await;
    let (answer, _) = on_second.begin(&file).await;
    let Response::Entry(entry) = answer.msg else {
        panic!("{:?}", answer.msg);
    };
    assert_eq!((entry.path.as_str(), entry.version), ("once.bin", 1));
    // Through the first node too: the same version, not a second one.
    let (again, _) = on_first.begin(&file).await;
    assert_eq!(again.msg, Response::Entry(entry.clone()));
    let back = on_second
        .get(&folder.folder_id, "once.bin", &key)
        .await
        .unwrap();
    assert_eq!(back, bytes);
    cluster.nodes.push(Node::restart(third).await);
    cluster.converged().await;
}

#[tokio::test]
async fn two_rotations_of_one_folder_through_two_nodes_do_not_race() {
    use coffer_proto::ErrorCode;
    use coffer_proto::request::{FolderRef, FolderShare, FolderUnshare};
    use coffer_proto::types::{Blob, EpochKey, MemberKey, Role};

    let cluster = Cluster::start(3).await;
    for who in ["alice", "bob", "carol"] {
        register(&cluster, 0, &Identity::new(who)).await;
    }
    let mut alice = Vec::new();
    for node in 0..3 {
        alice.push(cluster.signed_in(node, "alice").await);
    }
    let (folder, _) = alice[0].folder("team").await;
    let id = folder.folder_id;
    // Shared through the other two nodes at once: each share goes to the
    // folder's key node, which first waits to hold the folder just made.
    for (node, who) in [(1, "bob"), (2, "carol")] {
        alice[node]
            .ok(Request::FolderShare(FolderShare {
                folder_id: id.clone(),
                username: who.into(),
                role: Role::Editor,
                keys: vec![EpochKey {
                    epoch: 1,
                    wrapped_key: Blob(vec![1; 256]),
                }],
            }))
            .await;
    }
    // bob removed through one node and carol through another, at once: each
    // rotation brings epoch 2 under a key of its own (2s or 3s).
    let unshare = |member: &str, keep: &str, key: u8| {
        Request::FolderUnshare(FolderUnshare {
            folder_id: id.clone(),
            username: member.into(),
            epoch: 2,
            keys: ["alice", keep]
                .into_iter()
                .map(|username| MemberKey {
                    username: username.into(),
                    wrapped_key: Blob(vec![key; 256]),
                })
                .collect(),
        })
    };
    let (one, two) = alice.split_at_mut(2);
    let (first, second) = tokio::join!(
        one[1].conn.call(unshare("bob", "carol", 2)),
        two[0].conn.call(unshare("carol", "bob", 3)),
    );
    // One rotation is made; the other finds the folder at epoch 2 already.
    let made = [&first, &second]
        .into_iter()
        .filter(|r| matches!(r, Response::Folder(_)))
        .count();
    let refused: Vec<ErrorCode> = [&first, &second]
        .into_iter()
        .filter_map(|r| match r {
            Response::Error(e) => Some(e.code),
            _ => None,
        })
        .collect();
    assert_eq!(
        (made, refused),
        (1, vec![ErrorCode::Conflict]),
        "{first:?} / {second:?}"
    );
    cluster.converged().await;
    // Every node gives alice the same keys: epoch 2 under one key only.
    let mut seen = Vec::new();
    for client in &mut alice {
        let Response::FolderKeys(keys) = client
            .ok(Request::FolderKeys(FolderRef {
                folder_id: id.clone(),
            }))
            .await
        else {
            panic!()
        };
        seen.push(keys.keys);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let epochs: Vec<u64> = seen[0].iter().map(|k| k.epoch).collect();
    assert_eq!(epochs, [1, 2], "{seen:?}");
}

/// Each write a client may send again after `unavailable` — a device
/// registered, a folder made, a member invited, a key rotated, a device
/// removed — made once
/// by a node that cannot reach the quorum, then sent again through another
/// node once it can: done once, answered as done.
#[tokio::test]
async fn writes_sent_again_through_another_node_are_done_once() {
    use coffer_proto::ErrorCode;
    use coffer_proto::request::{
        DeviceRegister, DeviceRemove, FolderCreate, FolderShare, FolderUnshare,
    };
    use coffer_proto::types::{Blob, EpochKey, MemberKey, Role};

    let mut cluster = Cluster::start(3).await;
    // Accounts the first node owns, and a folder whose key node it is, so
    // that it can take every write alone.
    let alice = name_owned_by(&cluster, "node-1", "alice");
    let bob = name_owned_by(&cluster, "node-1", "bob");
    register(&cluster, 0, &Identity::new(&alice)).await;
    register(&cluster, 0, &Identity::new(&bob)).await;
    let mut on_first = cluster.signed_in(0, &alice).await;
    let membership = cluster.nodes[0].config.membership().unwrap();
    let mut team = None;
    for i in 0.. {
        let (folder, _) = on_first.folder(&format!("team{i}")).await;
        if membership.owner(&folder.folder_id) == "node-1" {
            team = Some(folder.folder_id);
            break;
        }
    }
    let team = team.unwrap();
    cluster.converged().await;

    let device = Request::DeviceRegister(DeviceRegister {
        name: "laptop".into(),
        mac: "aa:bb:cc:dd:ee:01".into(),
        write_id: None,
    });
    let create = Request::FolderCreate(FolderCreate {
        label: "solo".into(),
        wrapped_key: Blob(vec![5; 256]),
        write_id: None,
    });
    let share = Request::FolderShare(FolderShare {
        folder_id: team.clone(),
        username: bob.clone(),
        role: Role::Editor,
        keys: vec![EpochKey {
            epoch: 1,
            wrapped_key: Blob(vec![6; 256]),
        }],
    });
    let unshare = Request::FolderUnshare(FolderUnshare {
        folder_id: team.clone(),
        username: bob.clone(),
        epoch: 2,
        keys: vec![MemberKey {
            username: alice.clone(),
            wrapped_key: Blob(vec![7; 256]),
        }],
    });

    // Alone, the first node takes each write but cannot say it is safe.
    let third = cluster.nodes.pop().unwrap().stop().await;
    let second = cluster.nodes.pop().unwrap().stop().await;
    for request in [&device, &create, &share] {
        on_first
            .refused(request.clone(), ErrorCode::Unavailable)
            .await;
    }
    // Sent again through the second node once it is back, each is done.
    cluster.rejoin(second).await;
    let mut on_second = cluster.signed_in(1, &alice).await;
    let Response::Device(laptop) = on_second.ok(device.clone()).await else {
        panic!()
    };
    let Response::Folder(solo) = on_second.ok(create.clone()).await else {
        panic!()
    };
    assert_eq!(on_second.ok(share.clone()).await, Response::Ok);
    // Once each: one device, one folder "solo", one invitation.
    let Response::Devices(devices) = on_second.ok(Request::DeviceList).await else {
        panic!()
    };
    assert_eq!(devices.devices, std::slice::from_ref(&laptop));
    let Response::Folders(folders) = on_second.ok(Request::FolderList).await else {
        panic!()
    };
    let solos: Vec<_> = folders
        .folders
        .iter()
        .filter(|f| f.label == "solo")
        .collect();
    assert_eq!(solos, [&solo]);
    let mut bob_client = cluster.signed_in(1, &bob).await;
    let Response::Invites(invites) = bob_client.ok(Request::InviteList).await else {
        panic!()
    };
    assert_eq!(invites.invites.len(), 1, "{invites:?}");

    // A rotation likewise.
    let second = cluster.nodes.pop().unwrap().stop().await;
    on_first
        .refused(unshare.clone(), ErrorCode::Unavailable)
        .await;
    cluster.rejoin(second).await;
    let mut on_second = cluster.signed_in(1, &alice).await;
    let Response::Folder(rotated) = on_second.ok(unshare).await else {
        panic!()
    };
    assert_eq!((rotated.folder_id, rotated.epoch), (team, 2));

    // And a removal: the device, removed by the first node alone, then
    // through the second, which has its record by then (a node rejoins once
    // caught up) — known by the row it deleted, not `not_found`.
    let remove = Request::DeviceRemove(DeviceRemove {
        device_id: laptop.device_id.clone(),
    });
    let mut on_first = cluster.signed_in(0, &alice).await;
    let second = cluster.nodes.pop().unwrap().stop().await;
    on_first
        .refused(remove.clone(), ErrorCode::Unavailable)
        .await;
    cluster.rejoin(second).await;
    let mut on_second = cluster.signed_in(1, &alice).await;
    assert_eq!(on_second.ok(remove).await, Response::Ok);
    let Response::Devices(devices) = on_second.ok(Request::DeviceList).await else {
        panic!()
    };
    assert!(devices.devices.is_empty(), "{devices:?}");
    cluster.nodes.push(Node::restart(third).await);
    cluster.converged().await;
}

/// A device registered and a folder made by a node cut off from everyone
/// (answered `unavailable`, heard by no peer), then sent again with the same
/// write ids through another node while the first is down: once the first
/// is back, every node holds one device and one folder — the ones the
/// second node answered, with what was done to them since.
#[tokio::test]
async fn a_creation_no_peer_heard_of_sent_again_elsewhere_is_one_row() {
    use coffer_proto::ErrorCode;
    use coffer_proto::request::{DeviceRegister, DeviceRename, FolderCreate, upload_id};
    use coffer_proto::types::Blob;

    let mut cluster = Cluster::start(3).await;
    register(&cluster, 0, &Identity::new("alice")).await;
    cluster.converged().await;
    let device = Request::DeviceRegister(DeviceRegister {
        name: "laptop".into(),
        mac: "aa:bb:cc:dd:ee:01".into(),
        write_id: Some(upload_id([1; 16])),
    });
    let create = Request::FolderCreate(FolderCreate {
        label: "solo".into(),
        wrapped_key: Blob(vec![5; 256]),
        write_id: Some(upload_id([2; 16])),
    });
    let mut on_first = cluster.signed_in(0, "alice").await;
    let third = cluster.nodes.pop().unwrap().stop().await;
    let second = cluster.nodes.pop().unwrap().stop().await;
    for request in [&device, &create] {
        on_first
            .refused(request.clone(), ErrorCode::Unavailable)
            .await;
    }
    let first = cluster.nodes.pop().unwrap().stop().await;
    cluster.nodes.push(Node::restart(second).await);
    cluster.nodes.push(Node::restart(third).await);
    cluster.linked().await;
    let mut on_second = cluster.signed_in(0, "alice").await;
    let Response::Device(laptop) = on_second.ok(device).await else {
        panic!()
    };
    let Response::Folder(solo) = on_second.ok(create).await else {
        panic!()
    };
    let Response::Device(desk) = on_second
        .ok(Request::DeviceRename(DeviceRename {
            device_id: laptop.device_id.clone(),
            name: "desk".into(),
        }))
        .await
    else {
        panic!()
    };
    cluster.rejoin(first).await;
    for node in 0..3 {
        let mut alice = cluster.signed_in(node, "alice").await;
        let Response::Devices(devices) = alice.ok(Request::DeviceList).await else {
            panic!()
        };
        // The time it was made is the first node's, the earlier.
        let names: Vec<_> = devices
            .devices
            .iter()
            .map(|d| (&d.device_id, &d.name, d.created_ms < desk.created_ms))
            .collect();
        assert_eq!(names, [(&desk.device_id, &desk.name, true)], "node {node}");
        let Response::Folders(folders) = alice.ok(Request::FolderList).await else {
            panic!()
        };
        let ids: Vec<_> = folders.folders.iter().map(|f| &f.folder_id).collect();
        assert_eq!(ids, [&solo.folder_id], "node {node}");
    }
}

#[tokio::test]
async fn chunks_reach_the_followers_while_the_upload_arrives() {
    use super::support::{TestFile, content, missing_list};

    let cluster = Cluster::start(3).await;
    register(&cluster, 0, &Identity::new("alice")).await;
    let mut alice = cluster.signed_in(0, "alice").await;
    let (folder, key) = alice.folder("team").await;
    let bytes = content(4 * 65_536, 4);
    let file = TestFile::new(&folder.folder_id, "ahead.bin", &bytes, &key);
    let (answer, chunks) = alice.begin(&file).await;
    let Response::Upload(upload) = answer.msg else {
        panic!("{:?}", answer.msg)
    };
    for i in missing_list(upload.chunk_count, &answer.body) {
        let sent = alice
            .send_chunk(&upload.upload_id, i, &chunks[i as usize])
            .await;
        assert!(matches!(sent, Response::ChunkAck(_)), "{sent:?}");
    }
    // Not committed, yet every follower holds every chunk: the commit will
    // not wait for the file to cross the network.
    let held = |node: usize| {
        chunks.iter().all(|chunk| {
            let hex = hex::encode(coffer_crypto::content_address(chunk));
            cluster.nodes[node]
                .config
                .data
                .join("chunks")
                .join(&hex[..2])
                .join(&hex[2..])
                .is_file()
        })
    };
    for _ in 0..500 {
        if held(1) && held(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        held(1) && held(2),
        "the followers lack chunks of the upload"
    );
    // Held there although no version refers to them yet: collection keeps
    // them, and the commit lands everywhere.
    for node in &cluster.nodes {
        node.server.collect_now().await.unwrap();
    }
    assert!(held(1) && held(2), "collection dropped pushed chunks");
    let committed = alice
        .conn
        .call(Request::UploadCommit(coffer_proto::request::UploadCommit {
            upload_id: upload.upload_id,
            meta: None,
        }))
        .await;
    assert!(matches!(committed, Response::Entry(_)), "{committed:?}");
    cluster.converged().await;
}

#[tokio::test]
async fn a_link_carries_the_chunks_of_a_version_before_its_record() {
    let (mut cluster, mut alice, folder, key) = three_with_team().await;
    // The second node, the one the first pushes chunks to, goes down; this
    // test follows the first in its place.
    cluster.nodes.remove(1).stop().await;
    let mut link = open_link(&cluster, Some(("node-2", Kind::Peer)), "node-2").await;
    caught_up(&mut link).await;
    // More chunks than the connection buffers while this link is not read:
    // most are still queued at the first node when the upload commits.
    let addresses = put_in_16_chunks(&mut alice, &folder, &key, "large.bin").await;
    // Every chunk comes pushed before the record of the version naming
    // them: the follower need not ask for any of them again.
    let pushed = pushed_until_version(&mut link).await;
    let missed = addresses
        .iter()
        .filter(|hash| !pushed.contains_key(*hash))
        .count();
    assert_eq!(missed, 0, "chunks of the version came after its record");
}

/// Three nodes, alice signed in on the first with her folder "team", which
/// every node holds.
async fn three_with_team() -> (
    Cluster,
    super::support::Client,
    coffer_proto::response::FolderInfo,
    coffer_crypto::FolderKey,
) {
    let cluster = Cluster::start(3).await;
    register(&cluster, 0, &Identity::new("alice")).await;
    let mut alice = cluster.signed_in(0, "alice").await;
    let (folder, key) = alice.folder("team").await;
    cluster.converged().await;
    (cluster, alice, folder, key)
}

/// Puts a 16 MiB file at `path` in `folder` in 16 chunks; their addresses.
async fn put_in_16_chunks(
    client: &mut super::support::Client,
    folder: &coffer_proto::response::FolderInfo,
    key: &coffer_crypto::FolderKey,
    path: &str,
) -> BTreeSet<[u8; 32]> {
    use super::support::{TestFile, content};

    let bytes = content(16 << 20, path.len() as u8);
    let file = TestFile {
        chunk_size: 1 << 20,
        ..TestFile::new(&folder.folder_id, path, &bytes, key)
    };
    let committed = client.put(&file).await;
    assert!(committed.is_ok(), "{committed:?}");
    let (_, chunks) = file.upload_request();
    chunks
        .iter()
        .map(|chunk| coffer_crypto::content_address(chunk))
        .collect()
}

/// Reads a peer link until its follower is caught up.
async fn caught_up(link: &mut Link) {
    loop {
        let frame = link.recv::<PeerMessage>().await.unwrap().unwrap();
        if let PeerMessage::Records(records) = frame.msg
            && !records.more
        {
            return;
        }
    }
}

/// The chunks pushed on a peer link, with the node each says took it,
/// until a record of a file version comes.
async fn pushed_until_version(link: &mut Link) -> BTreeMap<[u8; 32], Option<String>> {
    let mut pushed = BTreeMap::new();
    loop {
        let frame = link.recv::<PeerMessage>().await.unwrap().unwrap();
        match frame.msg {
            PeerMessage::ChunkData(chunk) if frame.id == 0 => {
                pushed.insert(chunk.hash.0, chunk.origin);
            }
            PeerMessage::Records(records) => {
                let records =
                    coffer_proto::peer::decode_records(&frame.body, records.count).unwrap();
                let version = records.iter().any(|record| {
                    record.payload["rows"]
                        .as_array()
                        .is_some_and(|rows| rows.iter().any(|row| row["table"] == "versions"))
                });
                if version {
                    return pushed;
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_writer_sends_each_chunk_once_and_the_next_node_passes_it_on() {
    let (mut cluster, mut alice, folder, key) = three_with_team().await;
    // The third node goes down; this test follows the first two in its
    // place.
    cluster.nodes.pop().unwrap().stop().await;
    let mut from_first = open_link_to(&cluster, 0, Some(("node-3", Kind::Peer)), "node-3").await;
    let mut from_second = open_link_to(&cluster, 1, Some(("node-3", Kind::Peer)), "node-3").await;
    caught_up(&mut from_first).await;
    caught_up(&mut from_second).await;
    let addresses = put_in_16_chunks(&mut alice, &folder, &key, "chained.bin").await;
    // The first node, which took the upload, sent its chunks to the second
    // node alone, not to this one.
    let straight = pushed_until_version(&mut from_first).await;
    assert!(
        straight.keys().all(|hash| !addresses.contains(hash)),
        "the writer pushed {} of the chunks to a second follower",
        straight.len()
    );
    // The second node passed every one on, naming the first as the node
    // that took it.
    let mut passed_on = BTreeMap::new();
    while passed_on.len() < addresses.len() {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), from_second.recv::<PeerMessage>())
                .await
                .expect("the second node passes on every chunk")
                .unwrap()
                .unwrap();
        if let PeerMessage::ChunkData(chunk) = frame.msg
            && frame.id == 0
        {
            passed_on.insert(chunk.hash.0, chunk.origin);
        }
    }
    assert_eq!(
        passed_on.keys().copied().collect::<BTreeSet<_>>(),
        addresses
    );
    assert!(passed_on.values().all(|o| o.as_deref() == Some("node-1")));
}

/// The chunk files under a node's data directory.
fn chunk_files(node: &Node) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(node.config.data.join("chunks")).unwrap() {
        let shard = shard.unwrap().path();
        if shard.file_name().is_some_and(|n| n == "tmp") || !shard.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&shard).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn a_node_short_of_chunks_fetches_them_from_its_peers_unasked() {
    use super::support::{TestFile, content};

    let mut cluster = Cluster::start(3).await;
    let (name, mut on_first, folder, key) = team_on_first(&cluster, "node-1").await;
    let bytes = content(3 * 65_536 + 5, 3);
    on_first
        .put(&TestFile::new(&folder.folder_id, "kept.bin", &bytes, &key))
        .await
        .unwrap();
    cluster.converged().await;
    let mut held = Vec::new();
    for _ in 0..500 {
        held = chunk_files(&cluster.nodes[2]);
        if held.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held.len(), 4, "the third node holds the file's chunks");
    // The third node loses its chunks while down (a disk replaced, a
    // restore from an old backup): its versions still refer to them.
    let third = cluster.nodes.pop().unwrap().stop().await;
    for file in &held {
        std::fs::remove_file(file).unwrap();
    }
    let db = rusqlite::Connection::open(third.data.join("coffer.db")).unwrap();
    assert_eq!(db.execute("DELETE FROM chunks", []).unwrap(), 4);
    let lacking = || {
        db.query_row(
            "SELECT COUNT(DISTINCT r.hash) FROM chunk_refs r \
             WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.hash = r.hash)",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    assert_eq!(lacking(), 4);
    cluster.nodes.push(Node::restart(third).await);
    cluster.linked().await;
    // Nobody reads the file through it: it fetches what it lacks by itself.
    for _ in 0..500 {
        if lacking() == 0 && chunk_files(&cluster.nodes[2]) == held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lacking(), 0, "the third node still lacks chunks");
    assert_eq!(chunk_files(&cluster.nodes[2]), held);
    // And serves the file alone.
    let mut on_third = cluster.signed_in(2, &name).await;
    for node in cluster.nodes.drain(..2) {
        node.stop().await;
    }
    let back = on_third
        .get(&folder.folder_id, "kept.bin", &key)
        .await
        .unwrap();
    assert_eq!(back, bytes);
}

/// A follower restarted while a record it took still lacks a chunk that no
/// node can send it goes on acknowledging that record as unheld, from the
/// note its database kept: its peers count it behind, not caught up.
#[tokio::test]
async fn a_follower_restarted_before_its_chunks_came_still_acknowledges_them_unheld() {
    use super::support::{TestFile, content};

    let mut cluster = Cluster::start(3).await;
    let (_, mut on_first, folder, key) = team_on_first(&cluster, "node-1").await;
    on_first
        .put(&TestFile::new(
            &folder.folder_id,
            "one.bin",
            &content(1_000, 4),
            &key,
        ))
        .await
        .unwrap();
    cluster.converged().await;
    for _ in 0..500 {
        if chunk_files(&cluster.nodes[2]).len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = chunk_files(&cluster.nodes[2]);
    assert_eq!(lost.len(), 1, "the third node holds the file's chunk");
    // The third node, stopped, lacks the chunk and has noted the record
    // that needs it, as if it had taken that record without it; no node
    // can send it any more.
    let third = cluster.nodes.pop().unwrap().stop().await;
    std::fs::remove_file(&lost[0]).unwrap();
    for node in &cluster.nodes {
        for file in chunk_files(node) {
            std::fs::remove_file(file).unwrap();
        }
    }
    let db = rusqlite::Connection::open(third.data.join("coffer.db")).unwrap();
    let hash: Vec<u8> = db
        .query_row("SELECT hash FROM chunks", [], |r| r.get(0))
        .unwrap();
    db.execute("DELETE FROM chunks", []).unwrap();
    let noted = db
        .execute(
            "INSERT INTO unheld (origin, seq, hash) SELECT origin, origin_seq, ?1 FROM changes \
             WHERE kind IN ('upload_inline', 'upload_commit') ORDER BY seq DESC LIMIT 1",
            [&hash],
        )
        .unwrap();
    assert_eq!(noted, 1);
    drop(db);
    cluster.nodes.push(Node::restart(third).await);
    cluster.linked().await;
    // The first node, whose record it is, sees the third linked and caught
    // up with its log, yet behind: the record is not held there.
    let mut seen = None;
    for _ in 0..100 {
        let lag = pong(&cluster, 0).await.peers["node-3"].clone();
        if lag.linked && lag.behind_records > 0 {
            seen = Some(lag);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.is_some(),
        "the third node acknowledged the record as held"
    );
    // And stays so, while the chunk cannot come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lag = pong(&cluster, 0).await.peers["node-3"].clone();
    assert!(lag.behind_records > 0, "{lag:?}");
}
