//! The simulated world the node is proven in.
//!
//! [`memnet`] is an in-memory network with NAT boxes that drives nodes with simulated time and
//! jumps from deadline to deadline; it carries the connection-core tests and the `run` command.

pub mod memnet;
pub mod nat;
pub mod sim;
pub mod world;
