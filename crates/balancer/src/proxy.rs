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

use coffer_net::{Net, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::balancer::{Balancer, ClientGuard};
use crate::config::Config;
use crate::copy::Bidirectional;

/// The first bytes a client sends, held until a backend answers them (then
/// the buffer takes the answer).
const FIRST: usize = 1024;

/// Whether `bytes` are exactly one whole TLS ClientHello: a handshake record
/// with the `client_hello` message complete inside it. A healthy server
/// answers such bytes at once (a ServerHello or an alert), so silence is the
/// backend's fault — never something a client can provoke with partial or
/// fragmented input, which is passed on without waiting for an answer.
fn whole_client_hello(bytes: &[u8]) -> bool {
    if bytes.len() < 9 || bytes[0] != 0x16 || bytes[1] != 0x03 || bytes[5] != 0x01 {
        return false;
    }
    let record = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    let hello = u32::from_be_bytes([0, bytes[6], bytes[7], bytes[8]]) as usize;
    bytes.len() == 5 + record && hello + 4 == record
}

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
        let began = Instant::now();
        match hand_over(&net, backend.spec.addr, &mut first, n, &config).await {
            Ok((upstream, answered)) => {
                relay(
                    &balancer,
                    &config,
                    &backend,
                    client,
                    upstream,
                    n,
                    &first[..answered],
                )
                .await;
                return;
            }
            Err(why) => {
                balancer.connect_failed(&backend, began, &why);
                tried.push(backend.spec.addr);
            }
        }
    }
    balancer.counters.unserved.fetch_add(1, Ordering::Relaxed);
    warn!(
        tried = tried.len(),
        "no backend reachable; closing the client connection"
    );
}

/// Connects to `addr` and hands it the client's first bytes (`first[..n]`).
/// When those bytes are a whole ClientHello, also waits for the backend's
/// answer and leaves it in `first` (its length is returned; 0 when nothing
/// was awaited). A backend that accepts but does not answer (a frozen
/// process: the kernel still accepts for it) fails like one that refused:
/// the client has received nothing yet, so the same bytes can go to another
/// backend without the client knowing. `Err`: why the backend is suspect.
async fn hand_over<N: Net>(
    net: &N,
    addr: SocketAddr,
    first: &mut [u8; FIRST],
    n: usize,
    config: &Config,
) -> Result<(N::Stream, usize), String> {
    let mut upstream = match timeout(config.connect_timeout, net.connect(addr)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {:?}", config.connect_timeout)),
    };
    upstream
        .write_all(&first[..n])
        .await
        .map_err(|e| format!("closed on the first bytes: {e}"))?;
    if !whole_client_hello(&first[..n]) {
        return Ok((upstream, 0));
    }
    match timeout(config.answer_timeout, upstream.read(first)).await {
        Ok(Ok(0)) => Err("closed without answering the ClientHello".into()),
        Ok(Ok(m)) => Ok((upstream, m)),
        Ok(Err(e)) => Err(format!("failed before answering: {e}")),
        Err(_) => Err(format!(
            "no answer to the ClientHello within {:?}",
            config.answer_timeout
        )),
    }
}

/// Passes the backend's answer on, then copies both ways until both sides
/// are done, the connection goes idle, or the backend is marked down.
async fn relay<S: Stream, T: Stream>(
    balancer: &Balancer,
    config: &Config,
    backend: &Backend,
    mut client: S,
    upstream: T,
    sent: usize,
    answer: &[u8],
) {
    let addr = backend.spec.addr;
    let down = backend.down_token();
    backend.total.fetch_add(1, Ordering::Relaxed);
    backend.bytes_in.fetch_add(sent as u64, Ordering::Relaxed);
    if !answer.is_empty() {
        if let Err(e) = client.write_all(answer).await {
            debug!(backend = %addr, error = %e, "the client left");
            return;
        }
        backend
            .bytes_out
            .fetch_add(answer.len() as u64, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod tests {
    use super::whole_client_hello;

    fn record(body_len: usize, hello_len: usize) -> Vec<u8> {
        let mut r = vec![0x16, 0x03, 0x01];
        r.extend_from_slice(&(body_len as u16).to_be_bytes());
        r.push(0x01);
        r.extend_from_slice(&(hello_len as u32).to_be_bytes()[1..]);
        r.resize(5 + body_len, 0xab);
        r
    }

    #[test]
    fn only_a_whole_client_hello_waits_for_an_answer() {
        assert!(whole_client_hello(&record(300, 296)));
        // Truncated, fragmented, or followed by more: not whole.
        assert!(!whole_client_hello(&record(300, 296)[..200]));
        assert!(!whole_client_hello(&record(300, 500)));
        let mut more = record(300, 296);
        more.push(0x17);
        assert!(!whole_client_hello(&more));
        // Not a handshake record, or not a ClientHello inside it.
        let mut alert = record(300, 296);
        alert[0] = 0x15;
        assert!(!whole_client_hello(&alert));
        let mut finished = record(300, 296);
        finished[5] = 0x14;
        assert!(!whole_client_hello(&finished));
        assert!(!whole_client_hello(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!whole_client_hello(&[]));
    }
}
