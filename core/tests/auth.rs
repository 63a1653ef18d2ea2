//! Tokens, permissions and origins (`roomcast_core::auth`).
//!
//! The RSA and EC keys under `fixtures/` were generated once with openssl
//! (`genpkey`, 2048-bit RSA, P-256, P-384) for these tests only.

use jsonwebtoken::{Algorithm, EncodingKey, crypto};
use roomcast_core::auth::*;
use roomcast_core::codec::centrifugo::{Disconnect, ErrorCode};
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"a-test-secret-of-reasonable-length";

const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa_public.pem");
const RSA_PUBLIC_PKCS1: &[u8] = include_bytes!("fixtures/rsa_public_pkcs1.pem");
const RSA_OTHER_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_other_private.pem");
const EC256_PRIVATE: &[u8] = include_bytes!("fixtures/ec256_private.pem");
const EC256_PUBLIC: &[u8] = include_bytes!("fixtures/ec256_public.pem");
const EC256_OTHER_PRIVATE: &[u8] = include_bytes!("fixtures/ec256_other_private.pem");
const EC384_PRIVATE: &[u8] = include_bytes!("fixtures/ec384_private.pem");
const EC384_PUBLIC: &[u8] = include_bytes!("fixtures/ec384_public.pem");
const K256_PUBLIC: &[u8] = include_bytes!("fixtures/k256_public.pem");
const ED25519_PUBLIC: &[u8] = include_bytes!("fixtures/ed25519_public.pem");

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// A JWT with any header, signed with `key` for `alg`.
fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{sig}")
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        _ => unreachable!(),
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    sign_raw(
        &json!({"alg": alg_name(alg), "typ": "JWT"}),
        claims,
        key,
        alg,
    )
}

fn hmac_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &hmac_key(), claims)
}

fn verifier(keys: TokenKeys<'_>) -> TokenVerifier {
    TokenVerifier::new(keys).unwrap()
}

fn hmac_verifier() -> TokenVerifier {
    verifier(TokenKeys {
        hmac_secret: Some(SECRET),
        ..TokenKeys::default()
    })
}

fn invalid(r: Result<ConnClaims, TokenError>) -> String {
    match r {
        Err(TokenError::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------

#[test]
fn every_algorithm_verifies_with_its_key() {
    let claims = json!({"sub": "42", "exp": NOW + 60, "info": {"name": "Ann"}});
    let cases: [(Algorithm, EncodingKey, TokenKeys<'_>); 8] = [
        (
            Algorithm::HS256,
            hmac_key(),
            TokenKeys {
                hmac_secret: Some(SECRET),
                ..Default::default()
            },
        ),
        (
            Algorithm::HS384,
            hmac_key(),
            TokenKeys {
                hmac_secret: Some(SECRET),
                ..Default::default()
            },
        ),
        (
            Algorithm::HS512,
            hmac_key(),
            TokenKeys {
                hmac_secret: Some(SECRET),
                ..Default::default()
            },
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            TokenKeys {
                public_key_pem: Some(RSA_PUBLIC),
                ..Default::default()
            },
        ),
        (
            Algorithm::RS384,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            TokenKeys {
                public_key_pem: Some(RSA_PUBLIC_PKCS1),
                ..Default::default()
            },
        ),
        (
            Algorithm::RS512,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            TokenKeys {
                public_key_pem: Some(RSA_PUBLIC),
                ..Default::default()
            },
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC256_PRIVATE).unwrap(),
            TokenKeys {
                public_key_pem: Some(EC256_PUBLIC),
                ..Default::default()
            },
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(EC384_PRIVATE).unwrap(),
            TokenKeys {
                public_key_pem: Some(EC384_PUBLIC),
                ..Default::default()
            },
        ),
    ];
    for (alg, key, keys) in cases {
        let v = verifier(keys);
        let token = sign(alg, &key, &claims);
        let c = v
            .verify_connect(&token, NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(c.user, "42", "{alg:?}");
        assert_eq!(c.expires_at, Some(NOW + 60));
        assert_eq!(c.info, Some(json!({"name": "Ann"})));
        // The same token, one signature byte flipped: Invalid.
        let mut bad = token.clone().into_bytes();
        let i = bad.len() - 3;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let reason = invalid(v.verify_connect(std::str::from_utf8(&bad).unwrap(), NOW));
        assert!(
            reason.contains("signature") || reason.contains("base64"),
            "{alg:?}: {reason}"
        );
    }
}

#[test]
fn accepted_algorithms_follow_the_keys() {
    assert_eq!(hmac_verifier().algorithms(), ["HS256", "HS384", "HS512"]);
    let rsa = verifier(TokenKeys {
        public_key_pem: Some(RSA_PUBLIC),
        ..Default::default()
    });
    assert_eq!(rsa.algorithms(), ["RS256", "RS384", "RS512"]);
    assert_eq!(rsa.public_key_kind(), Some(PublicKeyKind::Rsa));
    let ec = verifier(TokenKeys {
        public_key_pem: Some(EC256_PUBLIC),
        ..Default::default()
    });
    assert_eq!(ec.algorithms(), ["ES256"]);
    let ec = verifier(TokenKeys {
        public_key_pem: Some(EC384_PUBLIC),
        ..Default::default()
    });
    assert_eq!(ec.algorithms(), ["ES384"]);
    let both = verifier(TokenKeys {
        hmac_secret: Some(SECRET),
        public_key_pem: Some(EC256_PUBLIC),
        ..Default::default()
    });
    assert_eq!(both.algorithms(), ["HS256", "HS384", "HS512", "ES256"]);
    let only = verifier(TokenKeys {
        hmac_secret: Some(SECRET),
        algorithms: Some(&["HS512"]),
        ..Default::default()
    });
    assert_eq!(only.algorithms(), ["HS512"]);
    let claims = json!({"sub": "1"});
    assert!(
        only.verify_connect(&sign(Algorithm::HS512, &hmac_key(), &claims), NOW)
            .is_ok()
    );
    let reason = invalid(only.verify_connect(&hs256(&claims), NOW));
    assert!(reason.contains("HS256 is not configured"), "{reason}");
}

#[test]
fn wrong_key_is_invalid() {
    let claims = json!({"sub": "42"});
    let other_secret = EncodingKey::from_secret(b"another secret").unwrap();
    let reason = invalid(
        hmac_verifier().verify_connect(&sign(Algorithm::HS256, &other_secret, &claims), NOW),
    );
    assert_eq!(reason, "bad signature");

    let rsa = verifier(TokenKeys {
        public_key_pem: Some(RSA_PUBLIC),
        ..Default::default()
    });
    let other = EncodingKey::from_rsa_pem(RSA_OTHER_PRIVATE).unwrap();
    assert_eq!(
        invalid(rsa.verify_connect(&sign(Algorithm::RS256, &other, &claims), NOW)),
        "bad signature"
    );

    let ec = verifier(TokenKeys {
        public_key_pem: Some(EC256_PUBLIC),
        ..Default::default()
    });
    let other = EncodingKey::from_ec_pem(EC256_OTHER_PRIVATE).unwrap();
    assert_eq!(
        invalid(ec.verify_connect(&sign(Algorithm::ES256, &other, &claims), NOW)),
        "bad signature"
    );
}

#[test]
fn algorithm_not_configured_is_invalid() {
    let claims = json!({"sub": "42"});
    // An RSA-only verifier refuses HS256, even signed with the public key's
    // bytes as the secret (the classic key-confusion attack).
    let rsa = verifier(TokenKeys {
        public_key_pem: Some(RSA_PUBLIC),
        ..Default::default()
    });
    let confused = EncodingKey::from_secret(RSA_PUBLIC).unwrap();
    let reason = invalid(rsa.verify_connect(&sign(Algorithm::HS256, &confused, &claims), NOW));
    assert!(reason.contains("not configured"), "{reason}");
    // An HMAC-only verifier refuses RS256.
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let reason =
        invalid(hmac_verifier().verify_connect(&sign(Algorithm::RS256, &key, &claims), NOW));
    assert!(reason.contains("RS256 is not configured"), "{reason}");
    // A P-256 key does not verify ES384.
    let ec = verifier(TokenKeys {
        public_key_pem: Some(EC256_PUBLIC),
        ..Default::default()
    });
    let key = EncodingKey::from_ec_pem(EC384_PRIVATE).unwrap();
    let reason = invalid(ec.verify_connect(&sign(Algorithm::ES384, &key, &claims), NOW));
    assert!(reason.contains("ES384 is not configured"), "{reason}");
    // Names roomcast does not verify.
    for alg in ["PS256", "EdDSA", "ES512", "HS1", ""] {
        let token = format!(
            "{}.{}.{}",
            b64(json!({"alg": alg}).to_string().as_bytes()),
            b64(claims.to_string().as_bytes()),
            b64(b"sig")
        );
        let reason = invalid(hmac_verifier().verify_connect(&token, NOW));
        assert!(reason.contains("unsupported algorithm"), "{alg}: {reason}");
    }
}

#[test]
fn alg_none_is_invalid() {
    let claims = json!({"sub": "admin", "exp": NOW + 60});
    for none in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": none, "typ": "JWT"}).to_string().as_bytes());
        let body = b64(claims.to_string().as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            let reason = invalid(hmac_verifier().verify_connect(&token, NOW));
            assert!(
                reason.contains("none") || reason.contains("three"),
                "{token}: {reason}"
            );
        }
    }
}

#[test]
fn malformed_tokens_are_invalid() {
    let v = hmac_verifier();
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "...",
        "!!.!!.!!",
        "e30.e30.",
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    ] {
        invalid(v.verify_connect(token, NOW));
        assert!(matches!(
            v.verify_subscribe(token, NOW),
            Err(TokenError::Invalid(_))
        ));
    }
    // Well signed, but claims of the wrong shape.
    for claims in [
        json!([1, 2]),
        json!("text"),
        json!({"sub": 42}),
        json!({"exp": "tomorrow"}),
        json!({"exp": -5}),
        json!({"iat": {"a": 1}}),
        json!({"nbf": true}),
        json!({"channels": "room"}),
        json!({"channels": [1, 2]}),
    ] {
        invalid(v.verify_connect(&hs256(&claims), NOW));
    }
    // A critical header extension roomcast does not know; the same header
    // without `crit` verifies.
    let with = |header: Value| {
        v.verify_connect(
            &sign_raw(&header, &json!({"sub": "1"}), &hmac_key(), Algorithm::HS256),
            NOW,
        )
    };
    assert!(with(json!({"alg": "HS256", "kid": "k1"})).is_ok());
    invalid(with(json!({"alg": "HS256", "kid": "k1", "crit": ["kid"]})));
}

// ---------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------

#[test]
fn expired_versus_invalid() {
    let v = hmac_verifier();
    let at = |exp: u64| v.verify_connect(&hs256(&json!({"sub": "1", "exp": exp})), NOW);
    assert!(at(NOW + 1).is_ok());
    assert_eq!(at(NOW), Err(TokenError::Expired), "valid while now < exp");
    assert_eq!(at(NOW - 1), Err(TokenError::Expired));
    assert_eq!(at(0), Err(TokenError::Expired));
    // A fractional exp is truncated.
    let frac = hs256(&json!({"sub": "1", "exp": (NOW as f64) + 0.5}));
    assert_eq!(v.verify_connect(&frac, NOW), Err(TokenError::Expired));
    // No exp: never expires.
    assert_eq!(
        v.verify_connect(&hs256(&json!({"sub": "1"})), u64::MAX)
            .unwrap()
            .expires_at,
        None
    );
    // Expired and badly signed: Invalid (a new token of the same kind would not help).
    let other = EncodingKey::from_secret(b"other").unwrap();
    let token = sign(Algorithm::HS256, &other, &json!({"exp": NOW - 10}));
    assert_eq!(invalid(v.verify_connect(&token, NOW)), "bad signature");
    // Expired and of the wrong audience: Invalid.
    let aud = verifier(TokenKeys {
        hmac_secret: Some(SECRET),
        audience: Some("a"),
        ..Default::default()
    });
    let token = hs256(&json!({"exp": NOW - 10, "aud": "b"}));
    assert_eq!(
        invalid(aud.verify_connect(&token, NOW)),
        "audience mismatch"
    );
    // The typed answers.
    assert_eq!(
        ConnectDenied::from(TokenError::Expired).centrifugo(),
        Answer::Error(ErrorCode::TOKEN_EXPIRED)
    );
    assert_eq!(
        ConnectDenied::from(TokenError::Invalid("x".into())).centrifugo(),
        Answer::Close(Disconnect::INVALID_TOKEN)
    );
}

#[test]
fn nbf_and_iat_in_the_future_are_invalid() {
    let v = hmac_verifier();
    let ok = |claims: Value| v.verify_connect(&hs256(&claims), NOW);
    assert!(ok(json!({"nbf": NOW})).is_ok());
    assert!(
        ok(json!({"nbf": NOW + CLOCK_SKEW_SECS})).is_ok(),
        "skew allowed"
    );
    assert!(invalid(ok(json!({"nbf": NOW + CLOCK_SKEW_SECS + 1}))).contains("nbf"));
    assert_eq!(
        ok(json!({"iat": NOW - 100})).unwrap().issued_at,
        Some(NOW - 100)
    );
    assert!(ok(json!({"iat": NOW + CLOCK_SKEW_SECS})).is_ok());
    assert!(invalid(ok(json!({"iat": NOW + CLOCK_SKEW_SECS + 1}))).contains("iat"));
    // Near the end of time: no overflow.
    assert!(
        v.verify_connect(&hs256(&json!({"nbf": u64::MAX})), u64::MAX)
            .is_ok()
    );
}

#[test]
fn the_clock_is_ours() {
    // A token that expired long ago by the system clock is valid at a `now`
    // before its exp, and one valid today is expired at a later `now`: only
    // the given time counts (jsonwebtoken's own exp check is off).
    let v = hmac_verifier();
    let token = hs256(&json!({"sub": "1", "exp": 1000}));
    assert!(v.verify_connect(&token, 999).is_ok());
    assert_eq!(v.verify_connect(&token, 1000), Err(TokenError::Expired));
    let far = hs256(&json!({"sub": "1", "exp": u64::MAX}));
    assert!(v.verify_connect(&far, u64::MAX - 1).is_ok());
}

// ---------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------

#[test]
fn connection_claims() {
    let v = hmac_verifier();
    let c = v
        .verify_connect(
            &hs256(&json!({
                "sub": "42", "iat": NOW - 5, "exp": NOW + 5,
                "info": {"a": 1}, "meta": {"secret": true},
                "channels": ["news", "chat:lobby"],
                "subs": {"ignored": {}}, "jti": "x", "expire_at": 0,
            })),
            NOW,
        )
        .unwrap();
    assert_eq!(
        c,
        ConnClaims {
            user: "42".into(),
            expires_at: Some(NOW + 5),
            issued_at: Some(NOW - 5),
            info: Some(json!({"a": 1})),
            channels: vec!["news".into(), "chat:lobby".into()],
            meta: Some(json!({"secret": true})),
        }
    );
    assert_eq!(c.user(), User::new("42"));
    // No sub, empty sub, null sub: anonymous.
    for claims in [json!({}), json!({"sub": ""}), json!({"sub": null})] {
        let c = v.verify_connect(&hs256(&claims), NOW).unwrap();
        assert!(c.user().is_anonymous());
        assert!(c.channels.is_empty());
    }
}

#[test]
fn audience_and_issuer_checked_only_when_configured() {
    let plain = hmac_verifier();
    let checked = verifier(TokenKeys {
        hmac_secret: Some(SECRET),
        audience: Some("roomcast"),
        issuer: Some("https://auth.example"),
        ..Default::default()
    });
    let good = json!({"aud": "roomcast", "iss": "https://auth.example"});
    let good_list = json!({"aud": ["other", "roomcast"], "iss": "https://auth.example"});
    assert!(checked.verify_connect(&hs256(&good), NOW).is_ok());
    assert!(checked.verify_connect(&hs256(&good_list), NOW).is_ok());
    for (claims, why) in [
        (
            json!({"aud": "other", "iss": "https://auth.example"}),
            "audience mismatch",
        ),
        (
            json!({"aud": ["a", "b"], "iss": "https://auth.example"}),
            "audience mismatch",
        ),
        (json!({"iss": "https://auth.example"}), "audience mismatch"),
        (
            json!({"aud": 7, "iss": "https://auth.example"}),
            "audience mismatch",
        ),
        (
            json!({"aud": "roomcast", "iss": "https://evil.example"}),
            "issuer mismatch",
        ),
        (json!({"aud": "roomcast"}), "issuer mismatch"),
        (
            json!({"aud": "roomcast", "iss": ["https://auth.example"]}),
            "issuer mismatch",
        ),
    ] {
        assert_eq!(
            invalid(checked.verify_connect(&hs256(&claims), NOW)),
            why,
            "{claims}"
        );
        // Not configured: not looked at.
        assert!(
            plain.verify_connect(&hs256(&claims), NOW).is_ok(),
            "{claims}"
        );
    }
}

#[test]
fn subscription_claims() {
    let v = hmac_verifier();
    let c = v
        .verify_subscribe(
            &hs256(&json!({"sub": "42", "channel": "$chat:x", "exp": NOW + 9, "info": {"role": "mod"}})),
            NOW,
        )
        .unwrap();
    assert_eq!(
        c,
        SubClaims {
            user: "42".into(),
            channel: "$chat:x".into(),
            expires_at: Some(NOW + 9),
            issued_at: None,
            info: Some(json!({"role": "mod"})),
        }
    );
    for claims in [
        json!({"sub": "42"}),
        json!({"channel": ""}),
        json!({"channel": 5}),
    ] {
        assert!(matches!(
            v.verify_subscribe(&hs256(&claims), NOW),
            Err(TokenError::Invalid(_))
        ));
    }
    assert_eq!(
        v.verify_subscribe(&hs256(&json!({"channel": "a", "exp": NOW})), NOW),
        Err(TokenError::Expired)
    );
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[test]
fn key_errors() {
    let err = |keys: TokenKeys<'_>| TokenVerifier::new(keys).unwrap_err();
    assert_eq!(err(TokenKeys::default()), KeyError::NoKey);
    assert_eq!(
        err(TokenKeys {
            hmac_secret: Some(b""),
            ..Default::default()
        }),
        KeyError::EmptySecret
    );
    let bad_pem = |pem: &[u8]| match err(TokenKeys {
        public_key_pem: Some(pem),
        ..Default::default()
    }) {
        KeyError::BadPublicKey(m) => m,
        other => panic!("{other:?}"),
    };
    assert!(bad_pem(b"not a pem").contains("not a PEM"));
    assert!(
        bad_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .contains("unsupported")
    );
    assert!(
        bad_pem(b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n")
            .contains("not a valid RSA public key")
    );
    // Private keys are not public keys.
    assert!(bad_pem(RSA_PRIVATE).contains("found BEGIN PRIVATE KEY"));
    assert!(bad_pem(EC256_PRIVATE).contains("found BEGIN PRIVATE KEY"));
    // Curves and key types roomcast does not verify.
    assert!(bad_pem(K256_PUBLIC).contains("unsupported"));
    assert!(bad_pem(ED25519_PUBLIC).contains("unsupported"));
    assert!(matches!(
        err(TokenKeys { hmac_secret: Some(SECRET), algorithms: Some(&["HS999"]), ..Default::default() }),
        KeyError::UnknownAlgorithm(a) if a == "HS999"
    ));
    assert!(matches!(
        err(TokenKeys {
            hmac_secret: Some(SECRET),
            algorithms: Some(&["RS256"]),
            ..Default::default()
        }),
        KeyError::NoKeyFor { .. }
    ));
    assert!(matches!(
        err(TokenKeys {
            public_key_pem: Some(EC256_PUBLIC),
            algorithms: Some(&["ES384"]),
            ..Default::default()
        }),
        KeyError::NoKeyFor { .. }
    ));
    assert_eq!(
        err(TokenKeys {
            hmac_secret: Some(SECRET),
            audience: Some(""),
            ..Default::default()
        }),
        KeyError::Empty("token_audience")
    );
    // Debug output never shows the secret.
    assert!(!format!("{:?}", hmac_verifier()).contains("reasonable"));
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

fn ns(name: &str, options: NamespaceOptions) -> Namespace {
    Namespace {
        name: name.into(),
        options,
    }
}

fn alice() -> User {
    User::new("alice")
}

fn anon() -> User {
    User::anonymous()
}

fn denied(r: Result<impl std::fmt::Debug, Denial>) -> Denial {
    r.expect_err("expected a denial")
}

#[test]
fn open_mode_allows_everything() {
    let p = Policy::open();
    assert!(p.is_open());
    for room in [
        "lobby",
        "chat:x",
        "$secret",
        "$ns:x",
        "dialog#1,2",
        "unknown:room",
        ":x",
    ] {
        for user in [anon(), alice()] {
            let g = p.decide_subscribe(&user, room, None).unwrap();
            assert_eq!(g.source, GrantSource::Open);
            assert!(p.decide_publish(&user, room, false).is_ok());
            assert!(p.decide_history(&user, room, false).is_ok());
            assert!(p.decide_presence(&user, room, false).is_ok());
        }
    }
    assert_eq!(
        denied(p.decide_subscribe(&anon(), "", None)),
        Denial::UnknownChannel
    );
    let auth = Auth::open();
    assert!(auth.is_open() && !auth.tokens_configured());
    // Tokens are ignored: everyone is anonymous.
    assert_eq!(
        auth.connect(Some("garbage"), NOW),
        Ok(ConnClaims::anonymous())
    );
    assert_eq!(
        auth.seed_upgrade(Some("garbage"), NOW),
        Ok(ConnClaims::anonymous())
    );
    assert_eq!(auth.seed_upgrade(None, NOW), Ok(ConnClaims::anonymous()));
    assert!(auth.seed_subscribe(&anon(), "$anything").is_ok());
    assert!(auth.seed_publish(&anon(), "anything", false).is_ok());
}

#[test]
fn default_deny_once_configured() {
    let p = Policy::new(
        NamespaceOptions::default(),
        vec![ns("chat", NamespaceOptions::default())],
    );
    assert!(!p.is_open());
    for room in ["lobby", "chat:x"] {
        for user in [anon(), alice()] {
            assert!(matches!(
                denied(p.decide_subscribe(&user, room, None)),
                Denial::PermissionDenied(_)
            ));
            for subscriber in [false, true] {
                assert!(matches!(
                    denied(p.decide_publish(&user, room, subscriber)),
                    Denial::PermissionDenied(_)
                ));
                assert!(p.decide_history(&user, room, subscriber).is_err());
                assert!(p.decide_presence(&user, room, subscriber).is_err());
            }
        }
    }
}

#[test]
fn unknown_namespace_is_102() {
    let p = Policy::new(
        NamespaceOptions::allow_all(),
        vec![ns("chat", NamespaceOptions::allow_all())],
    );
    for room in ["news:x", ":x", "$news:x", "Chat:x", ""] {
        let d = denied(p.decide_subscribe(&alice(), room, None));
        assert_eq!(d, Denial::UnknownChannel, "{room}");
        assert_eq!(d.centrifugo(), Answer::Error(ErrorCode::UNKNOWN_CHANNEL));
        assert_eq!(
            denied(p.decide_publish(&alice(), room, true)),
            Denial::UnknownChannel
        );
        assert_eq!(denied(p.decide_token_channel(room)), Denial::UnknownChannel);
    }
    // The namespace is before the first `:`; `$` before it is the private prefix.
    assert!(p.decide_subscribe(&alice(), "chat:a:b", None).is_ok());
    assert_eq!(p.resolve("chat:a:b").unwrap().0, Some("chat"));
    assert_eq!(p.resolve("$chat:x").unwrap().0, Some("chat"));
    assert_eq!(p.resolve("lobby").unwrap().0, None);
    assert_eq!(
        RoomName::parse("$chat:x"),
        RoomName {
            private: true,
            namespace: Some("chat")
        }
    );
    assert_eq!(
        RoomName::parse("chat:$x"),
        RoomName {
            private: false,
            namespace: Some("chat")
        }
    );
}

fn only(set: impl Fn(&mut NamespaceOptions)) -> Policy {
    let mut o = NamespaceOptions::default();
    set(&mut o);
    Policy::new(NamespaceOptions::default(), vec![ns("ns", o)])
}

#[test]
fn subscribe_flags() {
    let p = only(|o| o.allow_subscribe_for_client = true);
    let g = p.decide_subscribe(&alice(), "ns:x", None).unwrap();
    assert_eq!(g.source, GrantSource::Namespace);
    assert_eq!(g.namespace.as_deref(), Some("ns"));
    assert!(
        p.decide_subscribe(&anon(), "ns:x", None).is_err(),
        "client flag excludes anonymous"
    );
    // Centrifugo: the anonymous flag alone grants nothing.
    let p = only(|o| o.allow_subscribe_for_anonymous = true);
    assert!(p.decide_subscribe(&anon(), "ns:x", None).is_err());
    assert!(p.decide_subscribe(&alice(), "ns:x", None).is_err());
    let p = only(|o| {
        o.allow_subscribe_for_client = true;
        o.allow_subscribe_for_anonymous = true;
    });
    assert!(p.decide_subscribe(&anon(), "ns:x", None).is_ok());
    assert!(p.decide_subscribe(&alice(), "ns:x", None).is_ok());
    // Flags of one namespace do not leak to another or to the default.
    assert!(p.decide_subscribe(&alice(), "x", None).is_err());
    let d = denied(p.decide_subscribe(&alice(), "x", None));
    assert_eq!(d.centrifugo(), Answer::Error(ErrorCode::PERMISSION_DENIED));
    assert_eq!(d.seed_close(), (1008, "permission denied"));
}

#[test]
fn publish_flags() {
    let p = only(|o| o.allow_publish_for_client = true);
    assert!(p.decide_publish(&alice(), "ns:x", false).is_ok());
    assert!(p.decide_publish(&anon(), "ns:x", true).is_err());

    let p = only(|o| o.allow_publish_for_subscriber = true);
    assert!(p.decide_publish(&alice(), "ns:x", true).is_ok());
    assert!(
        p.decide_publish(&alice(), "ns:x", false).is_err(),
        "not subscribed"
    );
    assert!(p.decide_publish(&anon(), "ns:x", true).is_err());

    let p = only(|o| o.allow_publish_for_anonymous = true);
    assert!(
        p.decide_publish(&anon(), "ns:x", true).is_err(),
        "anonymous flag alone"
    );
    assert!(p.decide_publish(&alice(), "ns:x", true).is_err());

    let p = only(|o| {
        o.allow_publish_for_subscriber = true;
        o.allow_publish_for_anonymous = true;
    });
    assert!(p.decide_publish(&anon(), "ns:x", true).is_ok());
    assert!(p.decide_publish(&anon(), "ns:x", false).is_err());

    let p = only(|o| {
        o.allow_publish_for_client = true;
        o.allow_publish_for_anonymous = true;
    });
    assert!(p.decide_publish(&anon(), "ns:x", false).is_ok());
    // Publishing does not imply subscribing.
    assert!(p.decide_subscribe(&anon(), "ns:x", None).is_err());
}

#[test]
fn history_and_presence_flags() {
    type Decide = fn(&Policy, &User, &str, bool) -> Result<(), Denial>;
    type Flags = fn(&mut NamespaceOptions) -> (&mut bool, &mut bool, &mut bool);
    let cases: [(Decide, Flags); 2] = [
        (Policy::decide_history, |o| {
            (
                &mut o.allow_history_for_client,
                &mut o.allow_history_for_subscriber,
                &mut o.allow_history_for_anonymous,
            )
        }),
        (Policy::decide_presence, |o| {
            (
                &mut o.allow_presence_for_client,
                &mut o.allow_presence_for_subscriber,
                &mut o.allow_presence_for_anonymous,
            )
        }),
    ];
    for (decide, flags) in cases {
        let p = only(|o| *flags(o).0 = true);
        assert!(decide(&p, &alice(), "ns:x", false).is_ok());
        assert!(decide(&p, &anon(), "ns:x", false).is_err());
        let p = only(|o| *flags(o).1 = true);
        assert!(decide(&p, &alice(), "ns:x", true).is_ok());
        assert!(decide(&p, &alice(), "ns:x", false).is_err());
        let p = only(|o| *flags(o).2 = true);
        assert!(decide(&p, &anon(), "ns:x", true).is_err());
        let p = only(|o| {
            let f = flags(o);
            *f.1 = true;
            *f.2 = true;
        });
        assert!(decide(&p, &anon(), "ns:x", true).is_ok());
        assert!(decide(&p, &anon(), "ns:x", false).is_err());
    }
}

#[test]
fn user_limited_rooms() {
    let p = only(|o| {
        o.allow_user_limited_channels = true;
        o.allow_subscribe_for_client = true;
        o.allow_subscribe_for_anonymous = true;
    });
    for (user, ok) in [
        ("42", true),
        ("43", true),
        ("4", false),
        ("44", false),
        ("", false),
    ] {
        let r = p.decide_subscribe(&User::new(user), "ns:dialog#42,43", None);
        assert_eq!(r.is_ok(), ok, "user {user:?}");
        if let Ok(g) = r {
            assert_eq!(g.source, GrantSource::UserLimited);
        }
    }
    // The list is after the last `#`.
    assert!(
        p.decide_subscribe(&User::new("7"), "ns:a#1#7", None)
            .is_ok()
    );
    assert!(
        p.decide_subscribe(&User::new("1"), "ns:a#1#7", None)
            .is_err()
    );
    assert!(p.decide_subscribe(&User::new("1"), "ns:a#", None).is_err());
    assert!(user_listed("dialog#42,43", "43"));
    assert!(!user_listed("dialog#42,43", ""));
    assert!(!user_listed("dialog", "dialog"));
    // Without the option, `#` is an ordinary character.
    let p = only(|o| o.allow_subscribe_for_client = true);
    assert!(
        p.decide_subscribe(&User::new("1"), "ns:dialog#42,43", None)
            .is_ok()
    );
    // The option alone lets in the listed users only.
    let p = only(|o| o.allow_user_limited_channels = true);
    assert!(
        p.decide_subscribe(&User::new("42"), "ns:dialog#42", None)
            .is_ok()
    );
    assert!(
        p.decide_subscribe(&User::new("42"), "ns:dialog", None)
            .is_err()
    );
}

fn sub(user: &str, channel: &str) -> SubClaims {
    SubClaims {
        user: user.into(),
        channel: channel.into(),
        expires_at: Some(NOW + 30),
        info: Some(json!({"x": 1})),
        ..SubClaims::default()
    }
}

#[test]
fn private_rooms_need_a_subscription_token() {
    // Even with every flag set, `$` rooms need a token.
    let p = Policy::new(
        NamespaceOptions::allow_all(),
        vec![ns("chat", NamespaceOptions::allow_all())],
    );
    for room in ["$secret", "$chat:secret"] {
        assert!(matches!(
            denied(p.decide_subscribe(&alice(), room, None)),
            Denial::PermissionDenied(_)
        ));
        let g = p
            .decide_subscribe(&alice(), room, Some(&sub("alice", room)))
            .unwrap();
        assert_eq!(g.source, GrantSource::SubscriptionToken);
        assert_eq!(g.chan_info, Some(json!({"x": 1})));
        assert_eq!(g.expires_at, Some(NOW + 30));
    }
    // `$` after the namespace is not the private prefix (as Centrifugo).
    assert!(p.decide_subscribe(&alice(), "chat:$x", None).is_ok());
    // A token alone decides, even where the flags deny.
    let p = Policy::new(NamespaceOptions::default(), vec![]);
    assert!(
        p.decide_subscribe(&alice(), "room", Some(&sub("alice", "room")))
            .is_ok()
    );
    assert!(
        p.decide_subscribe(&anon(), "room", Some(&sub("", "room")))
            .is_ok()
    );
}

#[test]
fn subscription_token_for_another_user_or_room() {
    let p = Policy::new(NamespaceOptions::default(), vec![]);
    let d = denied(p.decide_subscribe(&alice(), "$room", Some(&sub("bob", "$room"))));
    assert_eq!(d, Denial::InvalidToken("token user mismatch".into()));
    assert_eq!(d.centrifugo(), Answer::Close(Disconnect::INVALID_TOKEN));
    let d = denied(p.decide_subscribe(&alice(), "$room", Some(&sub("alice", "$other"))));
    assert_eq!(d, Denial::InvalidToken("token channel mismatch".into()));
    let d = denied(p.decide_subscribe(&anon(), "$room", Some(&sub("alice", "$room"))));
    assert!(matches!(d, Denial::InvalidToken(_)));
}

#[test]
fn token_channels() {
    let p = Policy::new(
        NamespaceOptions::default(),
        vec![ns("chat", NamespaceOptions::default())],
    );
    assert_eq!(
        p.decide_token_channel("chat:x").unwrap().source,
        GrantSource::ConnectionToken
    );
    assert!(p.decide_token_channel("lobby").is_ok());
    assert_eq!(
        denied(p.decide_token_channel("other:x")),
        Denial::UnknownChannel
    );
}

// ---------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------

fn configured(set: impl FnOnce(&mut AuthSettings)) -> Auth {
    let mut s = AuthSettings {
        token_hmac_secret: Some(String::from_utf8(SECRET.to_vec()).unwrap()),
        ..AuthSettings::default()
    };
    set(&mut s);
    Auth::new(&s, None).unwrap()
}

#[test]
fn auth_connect_and_refresh() {
    let auth = configured(|_| {});
    assert!(!auth.is_open() && auth.tokens_configured());
    let token = hs256(&json!({"sub": "42", "exp": NOW + 10}));
    assert_eq!(auth.connect(Some(&token), NOW).unwrap().user, "42");
    assert_eq!(auth.connect(None, NOW), Err(ConnectDenied::TokenRequired));
    assert_eq!(
        auth.connect(Some(""), NOW),
        Err(ConnectDenied::TokenRequired)
    );
    assert_eq!(
        auth.connect(Some(&token), NOW + 10),
        Err(ConnectDenied::Expired)
    );
    assert!(matches!(
        auth.connect(Some("x.y.z"), NOW),
        Err(ConnectDenied::Invalid(_))
    ));
    assert_eq!(
        ConnectDenied::TokenRequired.centrifugo(),
        Answer::Close(Disconnect::INVALID_TOKEN)
    );
    // Anonymous connections when allowed.
    let anon_ok = configured(|s| s.allow_anonymous_connect_without_token = true);
    assert_eq!(anon_ok.connect(None, NOW), Ok(ConnClaims::anonymous()));
    // Refresh keeps the user.
    let newer = hs256(&json!({"sub": "42", "exp": NOW + 100}));
    assert_eq!(
        auth.refresh(&User::new("42"), &newer, NOW)
            .unwrap()
            .expires_at,
        Some(NOW + 100)
    );
    assert!(matches!(
        auth.refresh(&User::new("41"), &newer, NOW),
        Err(ConnectDenied::Invalid(_))
    ));
    assert_eq!(
        auth.refresh(&User::new("42"), &token, NOW + 10),
        Err(ConnectDenied::Expired)
    );
}

#[test]
fn seed_protocol_rules() {
    let auth = configured(|s| {
        s.default_namespace = Some(NamespaceOptions {
            allow_subscribe_for_client: true,
            allow_publish_for_subscriber: true,
            ..NamespaceOptions::default()
        })
    });
    // The upgrade needs a valid ?token= (401 otherwise), even with
    // anonymous Centrifugo connections allowed.
    let token = hs256(&json!({"sub": "7"}));
    let user = auth.seed_upgrade(Some(&token), NOW).unwrap().user();
    for bad in [None, Some(""), Some("nope")] {
        let e = auth.seed_upgrade(bad, NOW).unwrap_err();
        assert_eq!(e.http_status(), 401);
    }
    let expired = hs256(&json!({"sub": "7", "exp": NOW}));
    assert_eq!(
        auth.seed_upgrade(Some(&expired), NOW),
        Err(ConnectDenied::Expired)
    );
    // Rooms it may use, and rooms it may not (closed 1008).
    assert!(auth.seed_subscribe(&user, "lobby").is_ok());
    assert!(auth.seed_publish(&user, "lobby", true).is_ok());
    assert_eq!(
        denied(auth.seed_publish(&user, "lobby", false)).seed_close(),
        SEED_DENIED
    );
    assert_eq!(
        denied(auth.seed_subscribe(&user, "$vip")).seed_close(),
        SEED_DENIED
    );
    assert_eq!(
        denied(auth.seed_subscribe(&user, "chat:x")).seed_close(),
        SEED_DENIED
    );
    // Namespaces without a key: no token needed, everyone anonymous.
    let keyless = Auth::new(
        &AuthSettings {
            default_namespace: Some(NamespaceOptions::allow_all()),
            ..AuthSettings::default()
        },
        None,
    )
    .unwrap();
    assert!(!keyless.is_open() && !keyless.tokens_configured());
    assert_eq!(keyless.seed_upgrade(None, NOW), Ok(ConnClaims::anonymous()));
    assert_eq!(
        keyless.connect(Some(&token), NOW),
        Ok(ConnClaims::anonymous())
    );
    assert!(keyless.seed_subscribe(&anon(), "lobby").is_ok());
    assert!(keyless.seed_subscribe(&anon(), "$lobby").is_err());
}

#[test]
fn auth_subscribe_with_tokens() {
    let auth = configured(|s| s.namespaces = vec![ns("chat", NamespaceOptions::default())]);
    let user = User::new("42");
    let token = |claims: Value| hs256(&claims);
    let good = token(json!({"sub": "42", "channel": "$chat:x", "exp": NOW + 5}));
    let g = auth.subscribe(&user, "$chat:x", Some(&good), NOW).unwrap();
    assert_eq!(g.source, GrantSource::SubscriptionToken);
    assert_eq!(g.expires_at, Some(NOW + 5));
    // Expired: 109.
    let d = denied(auth.subscribe(&user, "$chat:x", Some(&good), NOW + 5));
    assert_eq!(d, Denial::TokenExpired);
    assert_eq!(d.centrifugo(), Answer::Error(ErrorCode::TOKEN_EXPIRED));
    // Invalid: 103.
    let d = denied(auth.subscribe(&user, "$chat:x", Some("bad"), NOW));
    assert!(matches!(d, Denial::PermissionDenied(_)), "{d:?}");
    assert!(d.reason().contains("invalid subscription token"));
    // Wrong user, wrong room: close 3500.
    let other = token(json!({"sub": "43", "channel": "$chat:x"}));
    assert_eq!(
        denied(auth.subscribe(&user, "$chat:x", Some(&other), NOW)),
        Denial::InvalidToken("token user mismatch".into())
    );
    let elsewhere = token(json!({"sub": "42", "channel": "$chat:y"}));
    assert_eq!(
        denied(auth.subscribe(&user, "$chat:x", Some(&elsewhere), NOW)),
        Denial::InvalidToken("token channel mismatch".into())
    );
    // No token: the flags (all off here).
    assert!(auth.subscribe(&user, "chat:x", None, NOW).is_err());
    assert!(auth.subscribe(&user, "chat:x", Some(""), NOW).is_err());
    // An unknown namespace answers 102 before the token is looked at.
    assert_eq!(
        denied(auth.subscribe(&user, "x:y", Some(&good), NOW)),
        Denial::UnknownChannel
    );
    assert_eq!(
        denied(auth.subscribe(&user, "x:y", Some("bad"), NOW)),
        Denial::UnknownChannel
    );
    assert_eq!(
        denied(auth.publish(&user, "x:y", true)),
        Denial::UnknownChannel
    );
}

#[test]
fn auth_settings_build() {
    // A public key setting needs its bytes; bad bytes are a key error.
    let mut s = AuthSettings {
        token_public_key: Some("k.pem".into()),
        ..AuthSettings::default()
    };
    assert!(Auth::new(&s, None).is_err());
    assert!(Auth::new(&s, Some(b"junk")).is_err());
    let auth = Auth::new(&s, Some(EC256_PUBLIC)).unwrap();
    assert_eq!(auth.verifier().unwrap().algorithms(), ["ES256"]);
    // Algorithms without any key.
    s = AuthSettings {
        token_algorithms: Some(vec!["HS256".into()]),
        ..AuthSettings::default()
    };
    assert!(matches!(
        Auth::new(&s, None),
        Err(KeyError::NoKeyFor { .. })
    ));
    // Nothing configured: open.
    assert!(Auth::new(&AuthSettings::default(), None).unwrap().is_open());
    assert_eq!(
        Auth::new(&AuthSettings::default(), None)
            .unwrap()
            .expire_grace(),
        DEFAULT_EXPIRE_GRACE
    );
}

#[test]
fn api_key() {
    let auth = configured(|s| s.api_key = Some("k3y".into()));
    assert!(auth.api_key_configured());
    assert!(auth.api_key_matches(Some("k3y")));
    for wrong in [Some("k3"), Some("k3y "), Some("K3Y"), Some(""), None] {
        assert!(!auth.api_key_matches(wrong), "{wrong:?}");
    }
    let none = Auth::open();
    assert!(!none.api_key_configured());
    assert!(!none.api_key_matches(Some("")));
}

// ---------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------

#[test]
fn origin_without_allowed_origins_must_be_the_host() {
    let same = |o: &str, h: &str| origin_allowed(Some(o), Some(h), &[]);
    assert!(same("https://chat.example.com", "chat.example.com"));
    assert!(same("HTTPS://Chat.Example.COM", "chat.example.com"));
    assert!(same("http://chat.example.com", "CHAT.example.com"));
    assert!(same("http://localhost:8080", "localhost:8080"));
    assert!(same("https://example.com", "example.com:443"));
    assert!(same("http://example.com:80", "example.com"));
    assert!(same("http://[::1]:8080", "[::1]:8080"));
    assert!(same("http://127.0.0.1:8080/", "127.0.0.1:8080"));
    assert!(!same("https://evil.com", "chat.example.com"));
    assert!(!same(
        "https://chat.example.com.evil.com",
        "chat.example.com"
    ));
    assert!(!same("http://localhost:8081", "localhost:8080"));
    assert!(!same("http://localhost", "localhost:8080"));
    assert!(!same("https://example.com", "example.com:80"));
    assert!(!same("null", "example.com"));
    assert!(!same("file://", "example.com"));
    assert!(!same("ws://example.com", "example.com"));
    assert!(!same("http://user@example.com", "example.com"));
    assert!(!same("http://example.com/path", "example.com"));
    assert!(!same("http://", ""));
    assert!(!same("http://example.com:x", "example.com:x"));
    // No Origin: passes. No Host: an Origin cannot match it.
    assert!(origin_allowed(None, Some("example.com"), &[]));
    assert!(origin_allowed(None, None, &[]));
    assert!(!origin_allowed(Some("http://example.com"), None, &[]));
}

#[test]
fn origin_patterns() {
    let pats = [
        Pattern::new("https://*.Example.com"),
        Pattern::new("http://localhost:*"),
    ];
    let ok = |o: &str| origin_allowed(Some(o), Some("ignored.host"), &pats);
    assert!(ok("https://a.example.com"));
    assert!(ok("https://a.b.example.com"));
    assert!(ok("HTTPS://A.EXAMPLE.COM"));
    assert!(ok("http://localhost:3000"));
    assert!(!ok("https://example.com"), "the dot is literal");
    assert!(!ok("https://evil-example.com"));
    assert!(!ok("http://a.example.com"), "scheme is literal");
    assert!(
        !ok("https://evil.com/.example.com"),
        "`*` does not cross `/`"
    );
    assert!(
        !ok("https://ignored.host"),
        "patterns replace the same-host rule"
    );
    assert!(!ok("null"));
    assert!(origin_allowed(None, None, &pats));
    let any = [Pattern::new("*")];
    assert!(origin_allowed(Some("null"), None, &any));
    assert!(origin_allowed(Some("https://whatever.org"), None, &any));
    let q = [Pattern::new("http://host?.test")];
    assert!(origin_allowed(Some("http://host1.test"), None, &q));
    assert!(!origin_allowed(Some("http://host12.test"), None, &q));
    let exact = [Pattern::new("https://app.example.com")];
    assert!(origin_allowed(
        Some("https://app.example.com"),
        None,
        &exact
    ));
    assert!(!origin_allowed(
        Some("https://app.example.com:444"),
        None,
        &exact
    ));
    // Through Auth.
    let auth = configured(|s| s.allowed_origins = vec![Pattern::new("https://*.example.com")]);
    assert!(auth.origin_allowed(Some("https://x.example.com"), Some("other")));
    assert!(!auth.origin_allowed(Some("https://other"), Some("other")));
    assert!(Auth::open().origin_allowed(Some("https://h"), Some("h")));
    assert!(!Auth::open().origin_allowed(Some("https://evil"), Some("h")));
}
