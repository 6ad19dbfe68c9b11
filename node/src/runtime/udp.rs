//! A UDP socket served by two threads of its own, reading and writing in batches
//! (`quinn-udp`): `recvmmsg` with GRO on the way in, `sendmsg` with GSO on the way out, where the
//! kernel offers them.
//!
//! Under load a userspace tunnel spends most of its time in the kernel, one syscall and often
//! one wake-up per datagram; reading up to [`RECV_BATCH`] datagrams (each possibly a GRO run of
//! segments) per call and sending a run of equal-sized datagrams to one peer as one GSO call
//! shares that cost among many packets. The syscalls run on the socket's own reader and writer
//! threads, beside the event loop that encrypts and decrypts: a flood of outgoing traffic
//! queues behind the writer and never delays reading (STUN consent checks, handshakes), and the
//! other way round. Dropping the socket stops and joins both threads, so its port is free again
//! when `drop` returns.
//!
//! ICMP errors are switched on (`IP_RECVERR`): the reader drains the kernel's error queue and
//! hands the destinations reported unreachable to the loop with the next batch, so that a relay
//! whose process died is given up at once instead of after seconds of unanswered datagrams.

use std::cell::Cell;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_queue::ArrayQueue;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::sync::{mpsc, Mutex};

use super::{DatagramSocket, RecvBatch, RECV_BATCH};
use node_core::pool::Buffer;
use node_core::Transmit;

/// Socket buffer size asked for: a burst of a whole TCP window of tunnelled traffic must fit
/// while the loop is busy encrypting, or it is dropped and TCP backs off. The kernel caps it at
/// `net.core.{r,w}mem_max`.
const SOCKET_BUFFER: usize = 8 << 20;

/// Batches read in a row before the loop's read yields to the runtime, so the other branches
/// of the loop (the device, timers) and other tasks (the portal link) run even when datagrams
/// never stop coming.
const YIELD_EVERY: u32 = 16;

/// Largest GSO payload: a UDP datagram's length field is 16 bits.
const MAX_GSO_BYTES: usize = 65_000;

/// Batches read ahead of the loop. Each holds [`RECV_BATCH`] buffers of 64 KiB (room for GRO
/// runs), so few: the socket's own buffer absorbs bursts.
const READ_AHEAD: usize = 2;

/// Batches of transmits queued for the writer beyond the one it is sending. Their payloads are
/// pool buffers, so this bounds what the node has in flight too.
const WRITE_AHEAD: usize = 1;

/// How long a thread waits for its socket before looking at the stop flag again (dropping the
/// socket wakes the reader at once; this is the backstop).
const POLL_TIMEOUT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 250_000_000,
};

/// A batching UDP socket with a reader and a writer thread.
#[derive(Debug)]
pub struct BatchSocket {
    socket: Arc<UdpSocket>,
    bound: SocketAddr,
    local: Cell<SocketAddr>,
    inbox: Mutex<Inbox>,
    /// Read batches handed back to the reader, so reading allocates nothing.
    free: Arc<ArrayQueue<RecvBatch>>,
    outgoing: Option<mpsc::Sender<Vec<Transmit>>>,
    /// Emptied transmit vectors handed back by the writer.
    spent: Arc<ArrayQueue<Vec<Transmit>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    reads: Cell<u32>,
}

/// What the reader delivered, and the batch [`DatagramSocket::recv_from`] is part-way through.
#[derive(Debug)]
struct Inbox {
    from_reader: Option<mpsc::Receiver<io::Result<RecvBatch>>>,
    current: Option<(RecvBatch, usize)>,
}

impl BatchSocket {
    /// Reports `addr` as the local address of every datagram from now on, instead of the
    /// address bound (see [`super::bind_host_socket`]: a socket bound to `0.0.0.0` reports a
    /// host address, and follows it when it changes).
    pub fn report_local_addr(&self, addr: SocketAddr) {
        self.local.set(addr);
    }

    /// The address reported for every datagram ([`BatchSocket::report_local_addr`]).
    pub fn reported_local_addr(&self) -> SocketAddr {
        self.local.get()
    }

    /// Takes over a bound socket: switches on GRO, asks for larger buffers and starts the
    /// reader and writer threads.
    pub fn new(socket: tokio::net::UdpSocket) -> io::Result<Self> {
        let socket = Arc::new(socket.into_std()?);
        // Non-blocking: the threads wait in poll(2) instead, which a blocking `recvmmsg` (it
        // waits for a whole batch) would not allow, and which lets them notice a stop.
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let state = Arc::new(UdpSocketState::new(UdpSockRef::from(&*socket))?);
        // Best effort: a smaller buffer only costs throughput.
        for (what, result) in [
            (
                "send",
                state.set_send_buffer_size(UdpSockRef::from(&*socket), SOCKET_BUFFER),
            ),
            (
                "receive",
                state.set_recv_buffer_size(UdpSockRef::from(&*socket), SOCKET_BUFFER),
            ),
        ] {
            if let Err(error) = result {
                tracing::debug!(%error, what, "cannot enlarge a UDP socket buffer");
            }
        }
        // Best effort too: without it a dead relay is noticed when its answers stop.
        if let Err(error) = state.enable_transport_errors(UdpSockRef::from(&*socket)) {
            tracing::debug!(%error, "cannot receive ICMP errors on a UDP socket");
        }
        tracing::debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            send_buffer = ?state.send_buffer_size(UdpSockRef::from(&*socket)).ok(),
            recv_buffer = ?state.recv_buffer_size(UdpSockRef::from(&*socket)).ok(),
            "UDP socket"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let errors_queued = Arc::new(AtomicBool::new(false));
        let free = Arc::new(ArrayQueue::new(READ_AHEAD + 2));
        let spent = Arc::new(ArrayQueue::new(WRITE_AHEAD + 2));
        let (to_loop, from_reader) = mpsc::channel(READ_AHEAD);
        let (outgoing, to_writer) = mpsc::channel(WRITE_AHEAD);
        let reader = {
            let reader = Reader {
                socket: Arc::clone(&socket),
                state: Arc::clone(&state),
                free: Arc::clone(&free),
                stop: Arc::clone(&stop),
                errors_queued: Arc::clone(&errors_queued),
            };
            std::thread::Builder::new()
                .name(format!("udp-read-{}", local.port()))
                .spawn(move || reader.run(&to_loop))?
        };
        let writer = {
            let (socket, spent) = (Arc::clone(&socket), Arc::clone(&spent));
            std::thread::Builder::new()
                .name(format!("udp-write-{}", local.port()))
                .spawn(move || write_loop(&socket, &state, to_writer, &spent, &errors_queued))?
        };
        Ok(Self {
            socket,
            bound: local,
            local: Cell::new(local),
            inbox: Mutex::new(Inbox {
                from_reader: Some(from_reader),
                current: None,
            }),
            free,
            outgoing: Some(outgoing),
            spent,
            stop,
            reader: Some(reader),
            writer: Some(writer),
            reads: Cell::new(0),
        })
    }

    /// The address the socket is bound to.
    pub fn bound_addr(&self) -> SocketAddr {
        self.bound
    }

    /// The next batch from the reader.
    async fn next_batch(inbox: &mut Inbox) -> io::Result<RecvBatch> {
        let Some(from_reader) = inbox.from_reader.as_mut() else {
            return Err(io::Error::other("the UDP socket is closed"));
        };
        match from_reader.recv().await {
            Some(batch) => batch,
            None => Err(io::Error::other("the UDP reader stopped")),
        }
    }

    fn recycle(&self, mut batch: RecvBatch) {
        batch.clear();
        // A full queue means the reader has enough; this one is freed.
        let _ = self.free.push(batch);
    }
}

impl Drop for BatchSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channels ends a reader blocked on a full queue and lets the writer
        // finish what it was given and stop.
        self.inbox.get_mut().from_reader = None;
        self.outgoing = None;
        // Wakes a reader waiting for datagrams; the poll timeout is the backstop.
        let me = match self.bound.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.bound.port()))
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, self.bound.port()))
            }
            IpAddr::V4(_) | IpAddr::V6(_) => self.bound,
        };
        let _ = self.socket.send_to(&[], me);
        for thread in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                tracing::error!("a UDP socket thread panicked");
            }
        }
    }
}

impl DatagramSocket for BatchSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local.get())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut inbox = self.inbox.lock().await;
        loop {
            if let Some((batch, next)) = inbox.current.as_mut() {
                if let Some((from, datagram)) = batch.datagrams().nth(*next) {
                    *next += 1;
                    let n = datagram.len().min(buf.len());
                    buf[..n].copy_from_slice(&datagram[..n]);
                    return Ok((n, from));
                }
                if let Some((batch, _)) = inbox.current.take() {
                    self.recycle(batch);
                }
            }
            // Cancel-safe: the channel's `recv` is, and nothing is taken before it returns.
            let batch = Self::next_batch(&mut inbox).await?;
            inbox.current = Some((batch, 0));
        }
    }

    async fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let mut one = vec![Transmit::new(dst, Buffer::from_slice(buf))];
        self.send_batch(&mut one).await;
        Ok(buf.len())
    }

    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<()> {
        let reads = self.reads.get().wrapping_add(1);
        self.reads.set(reads);
        if reads.is_multiple_of(YIELD_EVERY) {
            tokio::task::yield_now().await;
        }
        let mut inbox = self.inbox.lock().await;
        batch.clear();
        if let Some((partial, next)) = inbox.current.take() {
            // Left over from `recv_from`: handed over one datagram per entry.
            for (i, (from, datagram)) in partial.datagrams().skip(next).take(RECV_BATCH).enumerate()
            {
                let buffer = batch.buffer(i);
                let n = datagram.len().min(buffer.len());
                buffer[..n].copy_from_slice(&datagram[..n]);
                batch.push(i, from, n, n);
            }
            self.recycle(partial);
            return Ok(());
        }
        // Cancel-safe: the channel's `recv` is, and nothing is taken before it returns.
        let mut read = Self::next_batch(&mut inbox).await?;
        std::mem::swap(batch, &mut read);
        self.recycle(read);
        Ok(())
    }

    async fn send_batch(&self, transmits: &mut Vec<Transmit>) {
        if transmits.is_empty() {
            return;
        }
        let empty = self
            .spent
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(transmits.len()));
        let batch = std::mem::replace(transmits, empty);
        let Some(outgoing) = &self.outgoing else {
            return;
        };
        // Waits while the writer is a batch behind: the loop slows to what the socket takes.
        if outgoing.send(batch).await.is_err() {
            tracing::debug!("the UDP writer stopped; datagrams dropped");
        }
    }
}

/// Waits until `socket` is ready for `flags`, or the poll timeout passed; whether ICMP errors
/// wait in its error queue (poll reports them whatever `flags` asks for).
fn wait(socket: &UdpSocket, flags: PollFlags) -> io::Result<bool> {
    let mut fds = [PollFd::new(socket, flags)];
    match rustix::event::poll(&mut fds, Some(&POLL_TIMEOUT)) {
        Ok(_) => Ok(fds[0].revents().contains(PollFlags::ERR)),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// Whether a send or receive failed only because an ICMP error was pending on the socket
/// (`IP_RECVERR` reports the next one through the next call): that call did nothing, the
/// socket is fine, and the error itself waits in the error queue.
fn is_icmp_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// The reader thread's share of the socket.
struct Reader {
    socket: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    free: Arc<ArrayQueue<RecvBatch>>,
    stop: Arc<AtomicBool>,
    /// Set by the writer when a send met a pending ICMP error.
    errors_queued: Arc<AtomicBool>,
}

impl Reader {
    fn run(&self, to_loop: &mpsc::Sender<io::Result<RecvBatch>>) {
        let socket = &*self.socket;
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        let mut batch = self.free.pop().unwrap_or_default();
        let mut errors_queued = false;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            batch.clear();
            if std::mem::take(&mut errors_queued)
                | self.errors_queued.swap(false, Ordering::Relaxed)
            {
                self.drain_errors(&mut batch);
            }
            let read = {
                let mut iov: [IoSliceMut<'_>; RECV_BATCH] = iov_array(batch.buffers_mut());
                self.state
                    .recv(UdpSockRef::from(socket), &mut iov, &mut meta)
            };
            let n = match read {
                Ok(n) => n,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    if batch.unreachable().is_empty() {
                        match wait(socket, PollFlags::IN) {
                            Ok(queued) => errors_queued = queued,
                            Err(error) => {
                                let _ = to_loop.blocking_send(Err(error));
                                return;
                            }
                        }
                        continue;
                    }
                    0
                }
                Err(error) if is_icmp_error(&error) => {
                    errors_queued = true;
                    continue;
                }
                Err(error) => {
                    let _ = to_loop.blocking_send(Err(error));
                    return;
                }
            };
            for (i, m) in meta.iter().take(n).enumerate() {
                batch.push(i, m.addr, m.len, m.stride);
            }
            let next = self.free.pop().unwrap_or_default();
            // Blocks while the loop is behind; fails once the socket is dropped.
            if to_loop
                .blocking_send(Ok(std::mem::replace(&mut batch, next)))
                .is_err()
            {
                return;
            }
        }
    }

    /// Moves the destinations of the ICMP errors queued on the socket into `batch`.
    fn drain_errors(&self, batch: &mut RecvBatch) {
        loop {
            match self
                .state
                .recv_transport_error(UdpSockRef::from(&*self.socket))
            {
                Ok(Some(error)) => {
                    let Some(dst) = error.destination else {
                        continue;
                    };
                    // Too big: the tunnel's MTU leaves room for every path it is meant for;
                    // other errors say nothing of whether the peer is there.
                    if !matches!(error.payload, quinn_udp::TransportErrorPayload::Unreachable) {
                        tracing::debug!(%dst, error = ?error.payload, "ICMP error ignored");
                        continue;
                    }
                    tracing::debug!(%dst, reporter = ?error.addr, errno = error.raw_errno, "ICMP unreachable");
                    if !batch.push_unreachable(dst) {
                        tracing::debug!(%dst, "ICMP unreachable dropped: batch full");
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!(%error, "cannot read the socket's error queue");
                    return;
                }
            }
        }
    }
}

fn write_loop(
    socket: &UdpSocket,
    state: &UdpSocketState,
    mut from_loop: mpsc::Receiver<Vec<Transmit>>,
    spent: &ArrayQueue<Vec<Transmit>>,
    errors_queued: &AtomicBool,
) {
    let mut gso = Vec::with_capacity(MAX_GSO_BYTES);
    let writer = Writer {
        socket,
        state,
        errors_queued,
    };
    while let Some(mut transmits) = from_loop.blocking_recv() {
        writer.send_all(&transmits, &mut gso);
        // Dropping the transmits returns their buffers to the node's pool.
        transmits.clear();
        let _ = spent.push(transmits);
    }
}

/// The writer thread's share of the socket.
struct Writer<'a> {
    socket: &'a UdpSocket,
    state: &'a UdpSocketState,
    /// Tells the reader that a send met a pending ICMP error: its entry waits in the queue.
    errors_queued: &'a AtomicBool,
}

impl Writer<'_> {
    /// Sends `transmits`, runs of equal-sized datagrams to one destination as one GSO call.
    fn send_all(&self, transmits: &[Transmit], gso: &mut Vec<u8>) {
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
                self.send_run(single.dst, &single.payload, None);
                continue;
            }
            gso.clear();
            for transmit in run {
                gso.extend_from_slice(&transmit.payload);
            }
            self.send_run(first.dst, gso, Some(size));
        }
    }

    /// Sends `contents` to `dst`: one datagram, or with `segment` set a GSO run of datagrams of
    /// that size (the last may be shorter). Waits for room in the send buffer.
    fn send_run(&self, dst: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let gso = self.state.max_gso_segments();
        self.send_once(dst, contents, segment);
        if let Some(size) = segment {
            if gso > 1 && self.state.max_gso_segments() == 1 {
                // The first GSO send told quinn-udp the path cannot segment (EIO or EINVAL from a
                // driver): that run was lost, send it again one datagram at a time.
                for datagram in contents.chunks(size) {
                    self.send_once(dst, datagram, None);
                }
            }
        }
    }

    fn send_once(&self, dst: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let transmit = quinn_udp::Transmit {
            destination: dst,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        let mut icmp_retried = false;
        loop {
            match self
                .state
                .try_send(UdpSockRef::from(self.socket), &transmit)
            {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    match wait(self.socket, PollFlags::OUT) {
                        // Poll reports queued ICMP errors at once until the reader drains them.
                        Ok(queued) => {
                            if queued {
                                self.errors_queued.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(_) => return,
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // An earlier datagram's ICMP error came back through this call, which sent
                // nothing: once more (an unreachable network fails again, and is then lost).
                Err(error) if is_icmp_error(&error) && !icmp_retried => {
                    icmp_retried = true;
                    self.errors_queued.store(true, Ordering::Relaxed);
                }
                Err(error) => {
                    // Lost datagrams (unreachable network, message too long) are for the
                    // protocols above to cope with.
                    tracing::debug!(%dst, %error, segments = ?segment.map(|s| contents.len().div_ceil(s)), "send failed");
                    return;
                }
            }
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

    fn transmit(dst: SocketAddr, len: usize, byte: u8) -> Transmit {
        Transmit::new(dst, Buffer::from_slice(&vec![byte; len]))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_arrive_whole_and_in_order() {
        let a =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let b =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let dst = b.local_addr().unwrap();
        let other = a.local_addr().unwrap();
        // A GSO run of three equal datagrams and a shorter last one, then one elsewhere, then
        // one more to `dst`.
        let transmits = vec![
            transmit(dst, 1000, 1),
            transmit(dst, 1000, 2),
            transmit(dst, 1000, 3),
            transmit(dst, 10, 4),
            transmit(other, 5, 5),
            transmit(dst, 7, 6),
        ];
        let mut transmits = transmits;
        a.send_batch(&mut transmits).await;
        assert!(transmits.is_empty());
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

    /// Dropping the socket joins its threads, so the port is free at once: bind, use, drop
    /// and bind the same port again, many times over.
    #[tokio::test(flavor = "current_thread")]
    async fn drop_and_rebind_the_same_port() {
        let peer =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        // A port below the ephemeral range, so no other test binding port 0 can be handed
        // the port between a drop and the next bind.
        let mut first = None;
        for port in 20_000..21_000 {
            if let Ok(socket) = tokio::net::UdpSocket::bind(("127.0.0.1", port)).await {
                first = Some(BatchSocket::new(socket).unwrap());
                break;
            }
        }
        let first = first.expect("a free port in 20000..21000");
        let addr = first.local_addr().unwrap();
        drop(first);
        let mut batch = RecvBatch::new();
        for round in 0u8..50 {
            let socket = BatchSocket::new(tokio::net::UdpSocket::bind(addr).await.unwrap())
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            socket
                .send_to(&[round], peer.local_addr().unwrap())
                .await
                .unwrap();
            peer.recv_batch(&mut batch).await.unwrap();
            assert_eq!(
                batch
                    .datagrams()
                    .map(|(from, b)| (from, b.to_vec()))
                    .collect::<Vec<_>>(),
                vec![(addr, vec![round])]
            );
            drop(socket);
        }
    }

    /// A datagram to a closed port comes back as an ICMP port unreachable: the next batch
    /// names its destination, and the socket goes on sending and receiving.
    #[tokio::test(flavor = "current_thread")]
    async fn an_icmp_unreachable_reaches_the_loop_with_its_destination() {
        let a =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let b =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut batch = RecvBatch::new();
        for round in 0u8..3 {
            a.send_to(&[round], closed).await.unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), a.recv_batch(&mut batch))
                .await
                .expect("the ICMP error reaches the loop")
                .unwrap();
            assert_eq!(batch.unreachable(), &[closed], "round {round}");
            assert_eq!(batch.datagrams().count(), 0);
            // Neither a send nor a receive is eaten by the pending error.
            for (from, to) in [(&a, &b), (&b, &a)] {
                from.send_to(&[round], to.local_addr().unwrap())
                    .await
                    .unwrap();
                to.recv_batch(&mut batch).await.unwrap();
                assert_eq!(
                    batch
                        .datagrams()
                        .map(|(_, d)| d.to_vec())
                        .collect::<Vec<_>>(),
                    vec![vec![round]]
                );
                assert!(batch.unreachable().is_empty());
            }
        }
    }

    /// `recv_from` and `recv_batch` may be mixed: a batch `recv_from` started is handed over
    /// from where it stopped, nothing lost or repeated.
    #[tokio::test(flavor = "current_thread")]
    async fn single_reads_and_batches_share_the_stream() {
        let a =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let b =
            BatchSocket::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let dst = b.local_addr().unwrap();
        let mut transmits: Vec<Transmit> = (1..=4).map(|i| transmit(dst, 10, i)).collect();
        a.send_batch(&mut transmits).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let (n, _) = b.recv_from(&mut buf).await.unwrap();
        got.push(buf[..n].to_vec());
        let mut batch = RecvBatch::new();
        while got.len() < 4 {
            b.recv_batch(&mut batch).await.unwrap();
            got.extend(batch.datagrams().map(|(_, d)| d.to_vec()));
        }
        assert_eq!(got, (1..=4).map(|i| vec![i; 10]).collect::<Vec<_>>());
    }
}
