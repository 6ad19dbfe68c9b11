//! The envelope every WebSocket text message carries, shaped like a Phoenix channel frame:
//! `{"topic": "...", "event": "...", "payload": {...}, "ref": 3}`.
//!
//! - A node joins its room with `phx_join` on topic `client` or `gateway` (optionally with its
//!   id: `client:c3`); who it is comes from the token in the WebSocket URL.
//! - Heartbeats are `heartbeat` on topic `phoenix`.
//! - Every frame carrying a `ref` is answered by `phx_reply` with the same `ref` and a payload
//!   `{"status": "ok" | "error", "response": ...}`; error responses carry `{"reason": "..."}`.
//! - Pushes without a reply carry `"ref": null`.
//!
//! [`Frame`] is the parsed view; typed payloads are decoded from it with
//! [`crate::portal::messages::Message::from_event`].

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::portal::messages::Message;
use crate::portal::{lenient, ProtocolError};

/// Topic of heartbeats.
pub const PHOENIX_TOPIC: &str = "phoenix";
/// Room of clients.
pub const CLIENT_TOPIC: &str = "client";
/// Room of gateways.
pub const GATEWAY_TOPIC: &str = "gateway";
/// Joins a room.
pub const PHX_JOIN: &str = "phx_join";
/// Leaves a room.
pub const PHX_LEAVE: &str = "phx_leave";
/// Answers a frame that carried a `ref`.
pub const PHX_REPLY: &str = "phx_reply";
/// The server-side channel crashed; the room must be joined again.
pub const PHX_ERROR: &str = "phx_error";
/// The server closed the room.
pub const PHX_CLOSE: &str = "phx_close";
/// Keeps the connection alive.
pub const HEARTBEAT: &str = "heartbeat";

/// Longest text accepted, so a hostile peer cannot make a node parse arbitrarily large JSON.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// One frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The room (or `phoenix` for heartbeats).
    pub topic: String,
    /// What the payload means.
    pub event: String,
    /// Event-specific content.
    #[serde(default)]
    pub payload: Value,
    /// Correlates a request with its `phx_reply`; `None` for pushes.
    #[serde(rename = "ref", default, deserialize_with = "reference")]
    pub reference: Option<u64>,
}

/// Phoenix clients send refs as strings, ours as numbers; accept both.
fn reference<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ref {
        Number(u64),
        Text(String),
    }

    match Option::<Ref>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Ref::Number(n)) => Ok(Some(n)),
        Some(Ref::Text(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Outcome in a `phx_reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyStatus {
    /// The request succeeded.
    Ok,
    /// The request failed; the response carries a `reason`.
    Error,
}

/// The payload of `phx_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Success or failure.
    pub status: ReplyStatus,
    /// Request-specific content.
    #[serde(default)]
    pub response: Value,
}

impl Reply {
    /// The `reason` of an error response, or the whole response when it has none.
    pub fn reason(&self) -> String {
        match self.response.get("reason").and_then(Value::as_str) {
            Some(reason) => reason.to_owned(),
            None => self.response.to_string(),
        }
    }
}

impl Frame {
    /// Parses untrusted text; fields beyond the four are logged and ignored.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        if text.len() > MAX_FRAME_LEN {
            return Err(ProtocolError::FrameTooLarge {
                len: text.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let value = serde_json::from_str(text).map_err(ProtocolError::MalformedFrame)?;

        lenient::decode(value, "frame").map_err(ProtocolError::MalformedFrame)
    }

    /// A typed message on `topic`.
    pub fn message(
        topic: &str,
        message: &impl Message,
        reference: Option<u64>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            topic: topic.to_owned(),
            event: message.event().to_owned(),
            payload: message.to_payload()?,
            reference,
        })
    }

    /// A typed payload for `event` on `topic`, e.g. a join payload.
    pub fn with_payload(
        topic: &str,
        event: &str,
        payload: &impl Serialize,
        reference: Option<u64>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: serde_json::to_value(payload)?,
            reference,
        })
    }

    /// A `phx_join` for `topic`.
    pub fn join(topic: &str, payload: Value, reference: u64) -> Self {
        Self {
            topic: topic.to_owned(),
            event: PHX_JOIN.to_owned(),
            payload,
            reference: Some(reference),
        }
    }

    /// A heartbeat.
    pub fn heartbeat(reference: u64) -> Self {
        Self {
            topic: PHOENIX_TOPIC.to_owned(),
            event: HEARTBEAT.to_owned(),
            payload: Value::Object(Map::new()),
            reference: Some(reference),
        }
    }

    /// A successful `phx_reply`.
    pub fn reply_ok(topic: &str, reference: u64, response: Value) -> Self {
        Self::reply(topic, reference, ReplyStatus::Ok, response)
    }

    /// A failed `phx_reply` with `{"reason": reason}`.
    pub fn reply_error(topic: &str, reference: u64, reason: &str) -> Self {
        let mut response = Map::new();
        response.insert("reason".to_owned(), Value::String(reason.to_owned()));

        Self::reply(
            topic,
            reference,
            ReplyStatus::Error,
            Value::Object(response),
        )
    }

    fn reply(topic: &str, reference: u64, status: ReplyStatus, response: Value) -> Self {
        let mut payload = Map::new();
        let status = match status {
            ReplyStatus::Ok => "ok",
            ReplyStatus::Error => "error",
        };
        payload.insert("status".to_owned(), Value::String(status.to_owned()));
        payload.insert("response".to_owned(), response);

        Self {
            topic: topic.to_owned(),
            event: PHX_REPLY.to_owned(),
            payload: Value::Object(payload),
            reference: Some(reference),
        }
    }

    /// The payload as a `phx_reply`.
    pub fn as_reply(&self) -> Result<Reply, ProtocolError> {
        lenient::decode(self.payload.clone(), PHX_REPLY).map_err(ProtocolError::InvalidReply)
    }

    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // Built by hand because serialising a `Value` tree cannot fail, whereas
        // `serde_json::to_string` has to report errors that cannot happen here.
        let mut object = Map::new();
        object.insert("topic".to_owned(), Value::String(self.topic.clone()));
        object.insert("event".to_owned(), Value::String(self.event.clone()));
        object.insert("payload".to_owned(), self.payload.clone());
        object.insert(
            "ref".to_owned(),
            self.reference.map_or(Value::Null, Value::from),
        );

        Value::Object(object).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let frame = Frame::join(CLIENT_TOPIC, serde_json::json!({"token": "t"}), 4);

        assert_eq!(Frame::parse(&frame.to_text()).unwrap(), frame);
    }

    /// Found by the `portal_message` fuzz target: without exact float parsing, a number such as
    /// `1700000E300` came back as a different float after one re-encoding.
    #[test]
    fn floats_in_payloads_round_trip_exactly() {
        let text = r#"{"topic":"client","event":"init","payload":{"x":[{"id":7,"expires_at":1700000E300}]},"ref":null}"#;
        let frame = Frame::parse(text).unwrap();

        assert_eq!(Frame::parse(&frame.to_text()).unwrap(), frame);
    }

    #[test]
    fn accepts_string_refs_and_extra_fields() {
        let frame = Frame::parse(
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok"},"ref":"12","join_ref":"1"}"#,
        )
        .unwrap();

        assert_eq!(frame.reference, Some(12));
        assert_eq!(frame.as_reply().unwrap().status, ReplyStatus::Ok);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Frame::parse("{not json"),
            Err(ProtocolError::MalformedFrame(_))
        ));
        assert!(matches!(
            Frame::parse(r#"{"topic":"client"}"#),
            Err(ProtocolError::MalformedFrame(_))
        ));
        assert!(matches!(
            Frame::parse(r#"{"topic":"client","event":"x","ref":"abc"}"#),
            Err(ProtocolError::MalformedFrame(_))
        ));
        assert!(matches!(
            Frame::parse(&" ".repeat(MAX_FRAME_LEN + 1)),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        let bad_status = Frame::parse(
            r#"{"topic":"client","event":"phx_reply","payload":{"status":"maybe"},"ref":1}"#,
        )
        .unwrap();
        assert!(matches!(
            bad_status.as_reply(),
            Err(ProtocolError::InvalidReply(_))
        ));
    }

    #[test]
    fn error_reply_has_reason() {
        let frame = Frame::reply_error(CLIENT_TOPIC, 3, "forbidden");

        assert_eq!(frame.as_reply().unwrap().reason(), "forbidden");
    }
}
