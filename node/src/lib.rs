//! The client and gateway around the sans-IO core (`node-core`): the event loop that drives an
//! engine over a network, a clock, a device and a portal link, and (feature `host`, on by
//! default) the real ones: a TUN device, batched UDP, tokio's clock, the `client` and `gateway`
//! binaries' shared options. The simulation runs the same loop over turmoil.

#[cfg(feature = "host")]
pub mod cli;
#[cfg(feature = "host")]
pub mod identity;
pub mod runtime;
