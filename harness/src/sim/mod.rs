//! The deterministic simulation of a whole deployment, and the reference model it is checked
//! against (see `tests/sim.rs`).

pub mod case;
pub mod deployment;
pub mod draw;
pub mod hostile;
pub mod hosts;
pub mod model;
pub mod observers;
pub mod regression;
pub mod soak;
pub mod watchdog;
