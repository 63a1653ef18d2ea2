//! Arbitrary bytes as a client text frame.
//!
//! - `parse_client_frame` never panics;
//! - every accepted frame re-encodes to text that parses to an equal frame,
//!   and encoding is then a fixed point;
//! - every refusal has a close reason that fits a close frame (≤ 123 bytes),
//!   a close code of 1007 (exactly for bytes that are not UTF-8, unless too
//!   large), 1009 (too large) or 1008, and a listed metric label.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::Limits;
use roomcast_core::seed::{
    CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_TOO_BIG, FrameError, parse_client_frame,
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
            // Text is never refused as a protocol error (that comes from the
            // WebSocket layer), and only bytes that are not UTF-8 get 1007.
            let want = match e {
                FrameError::NotUtf8 => CLOSE_INVALID_DATA,
                FrameError::TooLarge { .. } => CLOSE_TOO_BIG,
                FrameError::Binary | FrameError::Protocol => {
                    panic!("{e:?} from parsing text")
                }
                _ => CLOSE_POLICY,
            };
            assert_eq!(e.close_code(), want, "close code for {e:?}");
            let utf8 = std::str::from_utf8(data).is_ok();
            if e == FrameError::NotUtf8 {
                assert!(!utf8, "NotUtf8 for UTF-8");
            } else if !utf8 {
                assert!(
                    matches!(e, FrameError::TooLarge { .. }),
                    "{e:?} for bytes not UTF-8"
                );
            }
            assert!(FrameError::LABELS.contains(&e.label()), "label of {e:?}");
        }
    }
});
