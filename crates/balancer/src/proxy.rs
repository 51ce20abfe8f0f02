//! One client connection: wait for its first bytes, pick a backend, connect
//! (another backend if the connect fails), then copy both ways until both
//! sides are done, the connection goes idle, or its backend is marked down.
//!
//! The bytes are TLS records the balancer cannot read; it holds no key. A TLS
//! client speaks first, so a client that sends nothing within
//! `first_byte_timeout` is closed before any backend sees it (slowloris).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use coffer_net::Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::balancer::{Balancer, ClientGuard};
use crate::copy::Bidirectional;

/// The first bytes a client sends, held until a backend is connected.
const FIRST: usize = 1024;

pub(crate) async fn serve<N: Net>(
    balancer: Arc<Balancer>,
    net: N,
    mut client: N::Stream,
    _place: ClientGuard,
) {
    let config = balancer.config();
    let mut first = [0u8; FIRST];
    let n = match timeout(config.first_byte_timeout, client.read(&mut first)).await {
        Err(_) => {
            balancer.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            debug!(after = ?config.first_byte_timeout, "the client sent nothing; closing");
            return;
        }
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Ok(Ok(n)) => n,
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    for _ in 0..config.max_attempts {
        let Some((backend, _active)) = balancer.pick(&tried) else {
            break;
        };
        let addr = backend.spec.addr;
        let mut upstream = match timeout(config.connect_timeout, net.connect(addr)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                balancer.connect_failed(&backend, &e);
                tried.push(addr);
                continue;
            }
            Err(_) => {
                balancer.connect_failed(
                    &backend,
                    &format_args!("no answer within {:?}", config.connect_timeout),
                );
                tried.push(addr);
                continue;
            }
        };
        backend.total.fetch_add(1, Ordering::Relaxed);
        let down = backend.down_token();
        if let Err(e) = upstream.write_all(&first[..n]).await {
            debug!(backend = %addr, error = %e, "backend closed at once");
            return;
        }
        backend.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        let mut copy = Bidirectional::new(client, upstream, &backend.bytes_in, &backend.bytes_out);
        let idle = config.idle_timeout;
        let mut deadline = Instant::now() + idle;
        loop {
            tokio::select! {
                result = &mut copy => {
                    match result {
                        Ok(()) => debug!(backend = %addr, "connection done"),
                        Err(e) => debug!(backend = %addr, error = %e, "connection ended with an error"),
                    }
                    return;
                }
                () = sleep_until(deadline) => {
                    if copy.moved() {
                        deadline = Instant::now() + idle;
                    } else {
                        balancer.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                        debug!(backend = %addr, ?idle, "idle; closing");
                        return;
                    }
                }
                () = down.cancelled(), if config.close_on_down => {
                    info!(backend = %addr, "backend marked down; closing its client connection");
                    return;
                }
            }
        }
    }
    balancer.counters.unserved.fetch_add(1, Ordering::Relaxed);
    warn!(
        tried = tried.len(),
        "no backend reachable; closing the client connection"
    );
}
