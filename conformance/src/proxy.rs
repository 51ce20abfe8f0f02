//! The fault proxy: a TCP relay on one link of the cluster (client →
//! balancer, balancer → server) that can refuse, black-hole, reset, delay or
//! throttle what crosses it, on command and at once — established
//! connections included, the way a real partition hits them.
//!
//! One proxy serves one link; the suite sets its [`Fault`] and reads its
//! [`ProxyStats`]. It runs on a runtime of its own, so a test that blocks its
//! own threads (waiting for a child process, say) never stalls the links.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a link does to the traffic crossing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Relays everything as it comes.
    #[default]
    Pass,
    /// Stops listening: new connections are refused (`ECONNREFUSED`);
    /// established ones carry on.
    Refuse,
    /// Accepts connections but delivers nothing either way, on new and
    /// established connections alike, until the fault changes (then what was
    /// held is delivered).
    BlackHole,
    /// Resets (RST) every established connection and every new one.
    Reset,
    /// Delivers each read this much later.
    Delay(Duration),
    /// Delivers at most this many bytes per second in each direction of each
    /// connection.
    Bandwidth(u64),
}

/// What a proxy has seen since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Connections accepted (and relayed or faulted).
    pub accepted: u64,
    /// Connections reset by a [`Fault::Reset`].
    pub reset: u64,
    /// Bytes delivered towards the target.
    pub bytes_up: u64,
    /// Bytes delivered back towards the connecting side.
    pub bytes_down: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    reset: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A running proxy on one link; dropping it stops it and closes its
/// connections.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    fault: watch::Sender<Fault>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one) on `runtime` and relays every
    /// connection to `target`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> std::io::Result<FaultProxy> {
        let listener = {
            let _guard = runtime.enter();
            let std = std::net::TcpListener::bind(listen)?;
            std.set_nonblocking(true)?;
            TcpListener::from_std(std)?
        };
        let addr = listener.local_addr()?;
        let (fault, watch) = watch::channel(Fault::Pass);
        let counters = Arc::new(Counters::default());
        let target = Arc::new(Mutex::new(target));
        let task = runtime.spawn(accept_loop(
            listener,
            addr,
            target.clone(),
            watch,
            counters.clone(),
        ));
        Ok(FaultProxy {
            addr,
            target,
            fault,
            counters,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relays new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().expect("not poisoned") = target;
    }

    /// Applies `fault` from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Its counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            reset: c.reset.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Wakes every relay, which ends when the fault's sender is gone.
        self.fault.send_replace(Fault::Reset);
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    mut fault: watch::Receiver<Fault>,
    counters: Arc<Counters>,
) {
    let mut listener = Some(listener);
    loop {
        let Some(open) = &listener else {
            // Refusing: nothing listens until the fault changes, then the same
            // address is taken again (SO_REUSEADDR lets it go at once).
            if fault.wait_for(|f| *f != Fault::Refuse).await.is_err() {
                return;
            }
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        tokio::select! {
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                if *fault.borrow() == Fault::Refuse {
                    listener = None;
                }
            }
            accepted = open.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                let target = *target.lock().expect("not poisoned");
                tokio::spawn(relay(stream, target, fault.clone(), counters.clone()));
            }
        }
    }
}

/// One connection: connect to the target (unless the link is reset or
/// black-holed), then pump both ways under the fault in force.
async fn relay(
    client: TcpStream,
    target: SocketAddr,
    mut fault: watch::Receiver<Fault>,
    counters: Arc<Counters>,
) {
    // A black hole holds the connection before it even reaches the target.
    let held = fault
        .wait_for(|f| *f != Fault::BlackHole)
        .await
        .map_or(Fault::Reset, |f| *f);
    if held == Fault::Reset {
        reset(&client, &counters);
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        // The target refuses: so does the link.
        reset(&client, &counters);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (upstream_rd, upstream_wr) = upstream.into_split();
    let up = pump(
        client_rd,
        upstream_wr,
        fault.clone(),
        counters.clone(),
        Direction::Up,
    );
    let down = pump(
        upstream_rd,
        client_wr,
        fault,
        counters.clone(),
        Direction::Down,
    );
    let (a, b) = tokio::join!(up, down);
    if a == Ended::Reset || b == Ended::Reset {
        counters.reset.fetch_add(1, Ordering::Relaxed);
    }
}

fn reset(stream: &TcpStream, counters: &Counters) {
    let _ = stream.set_zero_linger();
    counters.reset.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Closed,
    Reset,
}

/// Copies one direction until EOF, an error, or a reset of the link.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    counters: Arc<Counters>,
    direction: Direction,
) -> Ended {
    let mut buf = vec![0u8; 64 * 1024];
    let ended = loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = fault.wait_for(|f| *f == Fault::Reset) => break Ended::Reset,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                break Ended::Closed;
            }
            Ok(n) => n,
        };
        // Hold the bytes while the link is black-holed; then shape them.
        let now = match fault.wait_for(|f| *f != Fault::BlackHole).await {
            Ok(f) => *f,
            Err(_) => Fault::Reset,
        };
        match now {
            Fault::Reset => break Ended::Reset,
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Bandwidth(rate) => {
                let secs = n as f64 / rate.max(1) as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
            Fault::Pass | Fault::Refuse | Fault::BlackHole => {}
        }
        let written = tokio::select! {
            w = to.write_all(&buf[..n]) => w,
            _ = fault.wait_for(|f| *f == Fault::Reset) => break Ended::Reset,
        };
        if written.is_err() {
            break Ended::Closed;
        }
        let counter = match direction {
            Direction::Up => &counters.bytes_up,
            Direction::Down => &counters.bytes_down,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    };
    if ended == Ended::Reset {
        // Both sockets close with SO_LINGER 0: an RST. `forget` keeps the
        // write half from sending a FIN first when it drops.
        let _ = from.as_ref().set_zero_linger();
        let _ = to.as_ref().set_zero_linger();
        to.forget();
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    fn proxy(target: SocketAddr) -> FaultProxy {
        FaultProxy::start(
            &tokio::runtime::Handle::current(),
            "127.0.0.1:0".parse().unwrap(),
            target,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says_and_heals() {
        let p = proxy(echo().await);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"hello").await.unwrap(), b"hello");

        // Black hole: nothing comes back, then the held bytes arrive on heal.
        p.set(Fault::BlackHole);
        s.write_all(b"held").await.unwrap();
        let mut back = [0u8; 4];
        let silent =
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut back)).await;
        assert!(silent.is_err(), "a black hole delivered {back:?}");
        p.set(Fault::Pass);
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"held");

        // Delay: the round trip takes at least the delay each way.
        p.set(Fault::Delay(Duration::from_millis(100)));
        let t = tokio::time::Instant::now();
        round_trip(&mut s, b"slow").await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(200));

        // Reset: the established connection gets an RST.
        p.set(Fault::Reset);
        let mut one = [0u8; 1];
        let err = s.read(&mut one).await;
        assert!(
            matches!(&err, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{err:?}"
        );
        assert!(p.stats().reset >= 1);

        // Refuse: no listener at all; healing listens again on the same port.
        p.set(Fault::Refuse);
        // Connections the closing listener still had queued may be accepted
        // or reset; once it is gone, connecting is refused.
        let mut refused = None;
        for _ in 0..1000 {
            match TcpStream::connect(p.addr()).await {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    refused = Some(e);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let refused = refused.expect("a refusing link stops listening");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        p.set(Fault::Pass);
        let mut again = loop {
            match TcpStream::connect(p.addr()).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(round_trip(&mut again, b"back").await.unwrap(), b"back");
        let stats = p.stats();
        assert!(stats.bytes_up >= 17 && stats.bytes_down >= 17, "{stats:?}");
    }

    #[tokio::test]
    async fn bandwidth_limits_each_direction() {
        let p = proxy(echo().await);
        p.set(Fault::Bandwidth(100_000));
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let t = tokio::time::Instant::now();
        // 64 KiB at 100 kB/s each way: the reads are throttled to ≥ 0.6 s.
        let body = vec![7u8; 64 * 1024];
        let back = round_trip(&mut s, &body).await.unwrap();
        assert_eq!(back, body);
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_dead_target_resets_the_client() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = proxy(dead);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let mut one = [0u8; 1];
        let r = s.read(&mut one).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }
}
