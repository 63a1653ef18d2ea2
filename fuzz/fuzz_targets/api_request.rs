//! Arbitrary bytes as a server API request: the first byte picks the
//! method (`ApiMethod::ALL[b % 11]`, or an unknown name when `b >= 242`), the
//! rest is the body.
//!
//! - `codec::api::parse` never panics;
//! - an unknown method is exactly 104; every other refusal is 102..=112
//!   with a non-empty message of at most 240 bytes, an HTTP status of 400,
//!   404, 416 or 422, and an error body that is JSON holding the same code;
//! - a body that is not UTF-8 is refused;
//! - an accepted request names the method asked for; an accepted publish's
//!   data is JSON, and its publish and broadcast results are JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::codec::api::{self, ApiMethod, ApiRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let method = if pick >= 242 {
        "no_such_method"
    } else {
        ApiMethod::ALL[pick as usize % ApiMethod::ALL.len()].name()
    };
    match api::parse(method, body) {
        Err(e) => {
            if pick >= 242 {
                assert_eq!(e.code, 104, "{e}");
            } else {
                assert!((102..=112).contains(&e.code) && e.code != 104, "{e}");
            }
            assert!(!e.message.is_empty() && e.message.len() <= 240, "{e}");
            assert!([400, 404, 416, 422].contains(&e.status), "{e:?}");
            let v: serde_json::Value = serde_json::from_str(&e.encode())
                .unwrap_or_else(|err| panic!("{:?} is not JSON: {err}", e.encode()));
            assert_eq!(v["error"]["code"], e.code);
        }
        Ok(req) => {
            assert!(pick < 242);
            assert!(std::str::from_utf8(body).is_ok());
            assert_eq!(req.method().name(), method);
            if let ApiRequest::Publish(p) = &req {
                serde_json::from_str::<serde_json::Value>(p.data)
                    .unwrap_or_else(|err| panic!("data {:?} is not JSON: {err}", p.data));
                let r = api::encode_result(&api::publish_result(Some((1, &p.channel))));
                serde_json::from_str::<serde_json::Value>(&r).unwrap();
                let b = api::encode_result(&api::broadcast_result([r.as_str()]));
                serde_json::from_str::<serde_json::Value>(&b).unwrap();
            }
            if let ApiRequest::Channels { pattern: Some(p) } = &req {
                let r = api::channels_result([(p.as_ref(), 1)]);
                serde_json::from_str::<serde_json::Value>(&r).unwrap();
            }
        }
    }
});
