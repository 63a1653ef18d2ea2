//! Arbitrary bytes as a broker payload.
//!
//! - `parse_envelope` never panics;
//! - every accepted envelope re-encodes to a payload that parses to an equal
//!   envelope, and encoding is then a fixed point;
//! - every frame a client may send as `sendMessage` is accepted from the
//!   broker as the same envelope (the broker applies no limits);
//! - every refusal has a non-empty reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::envelope::parse_envelope;
use roomcast_core::seed::parse_client_frame;
use roomcast_core::{ClientFrame, Limits};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_envelope(data);
    match &parsed {
        Ok(env) => {
            let encoded = env.encode();
            let again = parse_envelope(encoded.as_bytes())
                .unwrap_or_else(|e| panic!("re-encoded payload {encoded:?} refused: {e}"));
            assert_eq!(&again, env, "round trip through {encoded:?}");
            assert_eq!(again.encode(), encoded, "encoding is not a fixed point");
        }
        Err(e) => {
            let reason = e.to_string();
            assert!(!reason.is_empty() && reason.len() <= 123, "{reason:?}");
        }
    }
    if let Ok(ClientFrame::SendMessage { room, message }) =
        parse_client_frame(data, &Limits::default())
    {
        let env = parsed.unwrap_or_else(|e| panic!("client frame refused as payload: {e}"));
        assert_eq!(env.room, room);
        assert_eq!(env.message, message);
    }
});
