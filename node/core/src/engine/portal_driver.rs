//! Couples a [`PhoenixChannel`] (sans-IO) to the link commands of the event loop.

use std::collections::VecDeque;
use std::time::Instant;

use super::{ControlCommand, ControlInput};
use crate::portal::{
    ChannelConfig, Event, Input, Message, PhoenixChannel, ProtocolError, RequestId,
};

/// A portal session as an engine embeds it: link inputs in, link commands and portal events
/// out.
#[derive(Debug)]
pub struct PortalDriver<I, E> {
    channel: PhoenixChannel<I, E>,
    commands: VecDeque<ControlCommand>,
    events: VecDeque<Event<I>>,
}

impl<I: Message, E: Message> PortalDriver<I, E> {
    /// A session that connects at once; reconnect jitter comes from `seed`.
    pub fn new(config: ChannelConfig, seed: u64) -> Self {
        let mut driver = Self {
            channel: PhoenixChannel::new(config, seed),
            commands: VecDeque::new(),
            events: VecDeque::new(),
        };
        driver.drain();
        driver
    }

    /// Whether the room is joined.
    pub fn is_joined(&self) -> bool {
        self.channel.is_joined()
    }

    /// Sends a message (held back until the room is joined).
    pub fn send(&mut self, message: &E) -> Result<RequestId, ProtocolError> {
        let id = self.channel.send(message);
        self.drain();
        id
    }

    /// Feeds what the link reported.
    pub fn handle_control(&mut self, input: ControlInput, now: Instant) {
        match &input {
            ControlInput::Opened => self.channel.handle_input(now, Input::Opened),
            ControlInput::Text(text) => self.channel.handle_input(now, Input::Text(text)),
            ControlInput::Closed(error) => self.channel.handle_input(now, Input::Closed(error)),
        }
        self.drain();
    }

    /// The host's network changed: the session reconnects now (see
    /// [`PhoenixChannel::handle_network_change`]).
    pub fn handle_network_change(&mut self, now: Instant) {
        self.channel.handle_network_change(now);
        self.drain();
    }

    /// Drives heartbeats and reconnects.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.channel.handle_timeout(now);
        self.drain();
    }

    /// The channel's next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.channel.poll_timeout().map(|(t, _)| t)
    }

    /// The next command for the link.
    pub fn poll_control(&mut self) -> Option<ControlCommand> {
        self.commands.pop_front()
    }

    /// The next event of the session (socket events are turned into link commands instead).
    pub fn poll_event(&mut self) -> Option<Event<I>> {
        self.events.pop_front()
    }

    fn drain(&mut self) {
        // Socket events first: a frame queued for a new socket must follow its Open.
        while let Some(event) = self.channel.poll_event() {
            match event {
                Event::OpenSocket => self.commands.push_back(ControlCommand::Open),
                Event::CloseSocket => self.commands.push_back(ControlCommand::Close),
                other @ (Event::Connected
                | Event::Disconnected { .. }
                | Event::Fatal { .. }
                | Event::Message(_)
                | Event::Reply { .. }) => self.events.push_back(other),
            }
        }
        while let Some(text) = self.channel.poll_transmit() {
            self.commands.push_back(ControlCommand::Send(text));
        }
    }
}
