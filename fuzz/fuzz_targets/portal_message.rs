//! Arbitrary bytes into the portal frame and message decoders: never panics, and whatever
//! decodes re-encodes to something that decodes to the same value.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use node_core::portal::messages::{ClientEgress, ClientIngress, GatewayEgress, GatewayIngress};
use node_core::portal::{Frame, Message};

fn check<M: Message + PartialEq + Debug>(frame: &Frame) {
    let Ok(Some(message)) = M::from_frame(frame) else {
        return;
    };
    let encoded =
        Frame::message(&frame.topic, &message, frame.reference).expect("a decoded message encodes");
    let text = encoded.to_text();
    let reparsed = Frame::parse(&text).expect("an encoded frame parses");
    let decoded = M::from_frame(&reparsed)
        .expect("an encoded message decodes")
        .expect("with its own event");
    assert_eq!(decoded, message);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = Frame::parse(text) else {
        return;
    };
    let again = Frame::parse(&frame.to_text()).expect("a re-encoded frame parses");
    assert_eq!(again, frame);
    let _ = frame.as_reply();
    check::<ClientIngress>(&frame);
    check::<ClientEgress>(&frame);
    check::<GatewayIngress>(&frame);
    check::<GatewayEgress>(&frame);
});
