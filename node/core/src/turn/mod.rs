//! The TURN client: allocations on the relays the portal announced.

mod allocation;
mod message;

#[cfg(test)]
mod coturn_interop;

pub(crate) use allocation::{Allocation, AllocationEvent};
pub use allocation::{RelayConfig, INITIAL_RTO, KEEPALIVE_INTERVAL, MAX_ATTEMPTS, MAX_CHANNELS};
pub use message::TurnError;
pub(crate) use message::{channel_data_header, RelayMessage, CHANNEL_DATA_HEADER_LEN};
