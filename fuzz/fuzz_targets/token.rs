//! Arbitrary bytes as a token, and as the claims of a well-signed token.
//!
//! - `TokenVerifier::verify_connect` / `verify_subscribe` never panic, for
//!   verifiers of every key kind (HMAC; RSA with an audience; HMAC and EC
//!   P-256 with an issuer), at any `now`;
//! - an Invalid token has a reason;
//! - the same bytes as JSON claims, signed HS256 with the verifier's secret:
//!   an accepted token's user is the `sub` signed, it has not expired at
//!   `now`, and Expired only comes with a numeric `exp`;
//! - the policy's answers for the token's user and its channels never panic.
//!
//! Input: 8 bytes of `now` (little endian), then the token text.
#![no_main]

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use roomcast_core::auth::{
    Namespace, NamespaceOptions, Policy, TokenError, TokenKeys, TokenVerifier, User,
};
use serde_json::Value;

const SECRET: &[u8] = b"fuzz-secret";
const RSA_PUBLIC: &[u8] = include_bytes!("../../core/tests/fixtures/rsa_public.pem");
const EC256_PUBLIC: &[u8] = include_bytes!("../../core/tests/fixtures/ec256_public.pem");

fn verifiers() -> &'static [TokenVerifier] {
    static V: OnceLock<Vec<TokenVerifier>> = OnceLock::new();
    V.get_or_init(|| {
        vec![
            TokenVerifier::new(TokenKeys {
                hmac_secret: Some(SECRET),
                ..TokenKeys::default()
            })
            .unwrap(),
            TokenVerifier::new(TokenKeys {
                public_key_pem: Some(RSA_PUBLIC),
                audience: Some("aud"),
                ..TokenKeys::default()
            })
            .unwrap(),
            TokenVerifier::new(TokenKeys {
                hmac_secret: Some(SECRET),
                public_key_pem: Some(EC256_PUBLIC),
                issuer: Some("iss"),
                ..TokenKeys::default()
            })
            .unwrap(),
        ]
    })
}

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let o = NamespaceOptions {
            allow_user_limited_channels: true,
            allow_subscribe_for_client: true,
            allow_publish_for_subscriber: true,
            ..NamespaceOptions::default()
        };
        Policy::new(
            o,
            vec![Namespace {
                name: "chat".into(),
                options: o,
            }],
        )
    })
}

fn check(token: &str, now: u64) {
    for v in verifiers() {
        match v.verify_connect(token, now) {
            Ok(c) => {
                let user = c.user();
                for room in &c.channels {
                    let _ = policy().decide_token_channel(room);
                    let _ = policy().decide_subscribe(&user, room, None);
                    let _ = policy().decide_publish(&user, room, true);
                }
            }
            Err(TokenError::Invalid(reason)) => assert!(!reason.is_empty()),
            Err(TokenError::Expired) => {}
        }
        if let Ok(s) = v.verify_subscribe(token, now) {
            assert!(!s.channel.is_empty());
            let _ = policy().decide_subscribe(&User::new(s.user.clone()), &s.channel, Some(&s));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let now = u64::from_le_bytes(data[..8].try_into().unwrap());
    let rest = &data[8..];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    check(text, now);

    // The bytes as claims, well signed.
    let Ok(claims) = serde_json::from_str::<Value>(text) else {
        return;
    };
    static KEY: OnceLock<EncodingKey> = OnceLock::new();
    let key = KEY.get_or_init(|| EncodingKey::from_secret(SECRET).unwrap());
    let Ok(token) = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key) else {
        return;
    };
    check(&token, now);
    match verifiers()[0].verify_connect(&token, now) {
        Ok(c) => {
            let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
            assert_eq!(c.user, sub);
            if let Some(exp) = c.expires_at {
                assert!(now < exp);
            }
        }
        Err(TokenError::Expired) => assert!(claims.get("exp").is_some_and(Value::is_number)),
        Err(TokenError::Invalid(_)) => {}
    }
});
