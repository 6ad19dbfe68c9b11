//! A UDP socket that reads and writes datagrams in batches (`quinn-udp`): `recvmmsg` with GRO
//! on the way in, `sendmsg` with GSO on the way out, where the kernel offers them.
//!
//! Under load a userspace tunnel spends most of its time in the kernel, one syscall and often
//! one wake-up per datagram; reading up to [`RECV_BATCH`] datagrams (each possibly a GRO run of
//! segments) per call and sending a run of equal-sized datagrams to one peer as one GSO call
//! shares that cost among many packets.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;

use super::{DatagramSocket, RecvBatch, RECV_BATCH};
use crate::Transmit;

/// Socket buffer size asked for: a burst of a whole TCP window of tunnelled traffic must fit
/// while the loop is busy encrypting, or it is dropped and TCP backs off. The kernel caps it at
/// `net.core.{r,w}mem_max`.
const SOCKET_BUFFER: usize = 8 << 20;

/// Batches read in a row before the reader yields to the runtime, so the other tasks (the
/// portal link) run even when datagrams never stop coming.
const YIELD_EVERY: u32 = 16;

/// Largest GSO payload: a UDP datagram's length field is 16 bits.
const MAX_GSO_BYTES: usize = 65_000;

/// A batching UDP socket.
#[derive(Debug)]
pub struct BatchSocket {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    /// Where a GSO run is assembled (segments must be contiguous).
    gso: RefCell<Vec<u8>>,
    reads: Cell<u32>,
}

impl BatchSocket {
    /// Wraps a bound socket: switches on GRO and asks for larger buffers.
    pub fn new(socket: tokio::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Best effort: a smaller buffer only costs throughput.
        for (what, result) in [
            (
                "send",
                state.set_send_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER),
            ),
            (
                "receive",
                state.set_recv_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER),
            ),
        ] {
            if let Err(error) = result {
                tracing::debug!(%error, what, "cannot enlarge a UDP socket buffer");
            }
        }
        tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            send_buffer = ?state.send_buffer_size(UdpSockRef::from(&socket)).ok(),
            recv_buffer = ?state.recv_buffer_size(UdpSockRef::from(&socket)).ok(),
            "UDP socket"
        );
        Ok(Self {
            socket,
            state,
            gso: RefCell::new(Vec::with_capacity(MAX_GSO_BYTES)),
            reads: Cell::new(0),
        })
    }

    /// The address the socket is bound to.
    pub fn bound_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends `contents` to `dst`: one datagram, or with `segment` set a GSO run of datagrams
    /// of that size (the last may be shorter). Waits for room in the send buffer.
    async fn send_run(&self, dst: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let gso = self.state.max_gso_segments();
        self.send_once(dst, contents, segment).await;
        if let Some(size) = segment {
            if gso > 1 && self.state.max_gso_segments() == 1 {
                // The first GSO send told quinn-udp the path cannot segment (EIO or EINVAL
                // from a driver): that run was lost, send it again one datagram at a time.
                for datagram in contents.chunks(size) {
                    self.send_once(dst, datagram, None).await;
                }
            }
        }
    }

    async fn send_once(&self, dst: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let transmit = quinn_udp::Transmit {
            destination: dst,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        let sent = self
            .socket
            .async_io(Interest::WRITABLE, || {
                self.state
                    .try_send(UdpSockRef::from(&self.socket), &transmit)
            })
            .await;
        if let Err(error) = sent {
            // Lost datagrams (unreachable network, message too long) are for the protocols
            // above to cope with.
            tracing::debug!(%dst, %error, segments = ?segment.map(|s| contents.len().div_ceil(s)), "send failed");
        }
    }
}

impl DatagramSocket for BatchSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    async fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(buf, dst).await
    }

    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<()> {
        let reads = self.reads.get().wrapping_add(1);
        self.reads.set(reads);
        if reads.is_multiple_of(YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
        batch.clear();
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        // Cancel-safe: the closure runs only once the socket is readable, and reads or not
        // in one synchronous call.
        let n = self
            .socket
            .async_io(Interest::READABLE, || {
                let buffers = batch.buffers_mut();
                let mut iov: [IoSliceMut<'_>; RECV_BATCH] = iov_array(buffers);
                self.state
                    .recv(UdpSockRef::from(&self.socket), &mut iov, &mut meta)
            })
            .await?;
        for (i, m) in meta.iter().take(n).enumerate() {
            batch.push(i, m.addr, m.len, m.stride);
        }
        Ok(())
    }

    async fn send_batch(&self, transmits: &[Transmit]) {
        let max_segments = self.state.max_gso_segments().max(1);
        let mut rest = transmits;
        while let Some(first) = rest.first() {
            // A GSO run: same destination, same size, except that the last may be shorter.
            let size = first.payload.len();
            let mut count = 1;
            if max_segments > 1 && size > 0 {
                let mut total = size;
                while let Some(next) = rest.get(count) {
                    if count >= max_segments
                        || next.dst != first.dst
                        || next.payload.len() > size
                        || total + next.payload.len() > MAX_GSO_BYTES
                    {
                        break;
                    }
                    total += next.payload.len();
                    count += 1;
                    if next.payload.len() < size {
                        break;
                    }
                }
            }
            let (run, tail) = rest.split_at(count);
            rest = tail;
            if let [single] = run {
                self.send_run(single.dst, &single.payload, None).await;
                continue;
            }
            // Copied out before the await, so the RefCell is not borrowed across it.
            let contents = {
                let mut gso = self.gso.borrow_mut();
                gso.clear();
                for transmit in run {
                    gso.extend_from_slice(&transmit.payload);
                }
                std::mem::take(&mut *gso)
            };
            self.send_run(first.dst, &contents, Some(size)).await;
            *self.gso.borrow_mut() = contents;
        }
    }
}

/// One `IoSliceMut` per buffer of a [`RecvBatch`].
fn iov_array(buffers: &mut [Vec<u8>]) -> [IoSliceMut<'_>; RECV_BATCH] {
    let mut iter = buffers.iter_mut();
    std::array::from_fn(|_| match iter.next() {
        Some(buffer) => IoSliceMut::new(buffer),
        None => IoSliceMut::new(&mut []),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BufferPool;

    fn transmit(pool: &BufferPool, dst: SocketAddr, len: usize, byte: u8) -> Transmit {
        let mut payload = pool.pull();
        payload.set_range(0..len);
        payload.fill(byte);
        Transmit {
            src: None,
            dst,
            payload,
            via: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_arrive_whole_and_in_order() {
        let a =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let b =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let dst = b.local_addr().unwrap();
        let other = a.local_addr().unwrap();
        let pool = BufferPool::new(8);
        // A GSO run of three equal datagrams and a shorter last one, then one elsewhere, then
        // one more to `dst`.
        let transmits = vec![
            transmit(&pool, dst, 1000, 1),
            transmit(&pool, dst, 1000, 2),
            transmit(&pool, dst, 1000, 3),
            transmit(&pool, dst, 10, 4),
            transmit(&pool, other, 5, 5),
            transmit(&pool, dst, 7, 6),
        ];
        a.send_batch(&transmits).await;
        let mut got = Vec::new();
        let mut batch = RecvBatch::new();
        while got.len() < 5 {
            b.recv_batch(&mut batch).await.unwrap();
            for (from, bytes) in batch.datagrams() {
                assert_eq!(from, other);
                got.push((bytes.len(), bytes[0]));
            }
        }
        assert_eq!(got, vec![(1000, 1), (1000, 2), (1000, 3), (10, 4), (7, 6)]);
        let mut batch = RecvBatch::new();
        a.recv_batch(&mut batch).await.unwrap();
        assert_eq!(
            batch
                .datagrams()
                .map(|(_, b)| b.to_vec())
                .collect::<Vec<_>>(),
            vec![vec![5; 5]]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn drop_and_rebind_the_same_port() {
        let first =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        drop(first);
        for _ in 0..20 {
            let socket =
                BatchSocket::new(tokio::net::UdpSocket::bind(addr).await.unwrap()).unwrap();
            drop(socket);
        }
    }
}
