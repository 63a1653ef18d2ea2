//! Arbitrary bytes as a client text frame.
//!
//! - `parse_client_frame` never panics;
//! - every accepted frame re-encodes to text that parses to an equal frame,
//!   and encoding is then a fixed point;
//! - every refusal has a close reason that fits a close frame (≤ 123 bytes),
//!   a close code of 1003, 1008 or 1009, and a listed metric label.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::Limits;
use roomcast_core::protocol::{
    CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED, FrameError, parse_client_frame,
};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    match parse_client_frame(data, &limits) {
        Ok(frame) => {
            let encoded = frame.encode();
            let again = parse_client_frame(encoded.as_bytes(), &limits)
                .unwrap_or_else(|e| panic!("re-encoded frame {encoded:?} refused: {e}"));
            assert_eq!(again, frame, "round trip through {encoded:?}");
            assert_eq!(again.encode(), encoded, "encoding is not a fixed point");
        }
        Err(e) => {
            let reason = e.to_string();
            assert!(
                !reason.is_empty() && reason.len() <= 123,
                "close reason of {} bytes: {reason:?}",
                reason.len()
            );
            assert!(
                matches!(
                    e.close_code(),
                    CLOSE_UNSUPPORTED | CLOSE_POLICY | CLOSE_TOO_BIG
                ),
                "close code {} for {e:?}",
                e.close_code()
            );
            assert!(FrameError::LABELS.contains(&e.label()), "label of {e:?}");
        }
    }
});
