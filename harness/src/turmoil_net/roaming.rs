//! A socket whose underlying [`NatShim`] can be replaced while the node runs on it: the node
//! keeps its state and its notion of its local address, and the world sees it send from a new
//! inside port, so its NAT gives it a new public port. That is a NAT rebinding, or a laptop
//! whose network came back with a new binding, seen from the node's peers.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::sync::Notify;

use super::NatShim;

/// A [`NatShim`] that [`RoamingSocket::replace`] swaps for another.
#[derive(Debug)]
pub struct RoamingSocket {
    current: RefCell<Rc<NatShim>>,
    /// The address the node was started with: what it keeps believing its local address is.
    first_local: SocketAddr,
    replaced: Notify,
}

impl RoamingSocket {
    /// Starts on `socket`.
    pub fn new(socket: NatShim) -> Self {
        let first_local = socket.local_addr();
        Self {
            current: RefCell::new(Rc::new(socket)),
            first_local,
            replaced: Notify::new(),
        }
    }

    /// From now on sends and receives go through `socket`; the old one is closed once a
    /// receive pending on it gives up.
    pub fn replace(&self, socket: NatShim) {
        *self.current.borrow_mut() = Rc::new(socket);
        self.replaced.notify_one();
    }

    /// The inside address datagrams leave from now.
    pub fn current_local(&self) -> SocketAddr {
        self.current.borrow().local_addr()
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let socket = Rc::clone(&self.current.borrow());
            tokio::select! {
                biased;
                () = self.replaced.notified() => {}
                received = node::runtime::DatagramSocket::recv_from(&*socket, buf) => {
                    return received;
                }
            }
        }
    }

    async fn send(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let socket = Rc::clone(&self.current.borrow());
        node::runtime::DatagramSocket::send_to(&*socket, buf, dst).await
    }
}

impl node::runtime::DatagramSocket for RoamingSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.first_local)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.recv(buf)
    }

    fn send_to(&self, buf: &[u8], dst: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.send(buf, dst)
    }
}
