//! Property tests: token verification, the config parser, the policy and the
//! Origin check never panic, whatever they are given, and their answers keep
//! their promises (an error is one line, a verified token's claims are the
//! ones signed, the open policy allows every named room).
//!
//! 256 cases each by default; `PROPTEST_CASES=N` raises it.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use roomcast_core::auth::*;
use roomcast_core::settings::{self, FLAG_KEYS, NAMESPACE_KEYS};
use serde_json::{Value, json};

const SECRET: &[u8] = b"property-secret";
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa_public.pem");
const EC256_PUBLIC: &[u8] = include_bytes!("fixtures/ec256_public.pem");

fn verifiers() -> Vec<TokenVerifier> {
    vec![
        TokenVerifier::new(TokenKeys {
            hmac_secret: Some(SECRET),
            ..TokenKeys::default()
        })
        .unwrap(),
        TokenVerifier::new(TokenKeys {
            public_key_pem: Some(RSA_PUBLIC),
            audience: Some("a"),
            ..TokenKeys::default()
        })
        .unwrap(),
        TokenVerifier::new(TokenKeys {
            hmac_secret: Some(SECRET),
            public_key_pem: Some(EC256_PUBLIC),
            issuer: Some("i"),
            ..TokenKeys::default()
        })
        .unwrap(),
    ]
}

/// Text shaped like a token: three dot-separated runs, sometimes base64url
/// of JSON, sometimes noise.
fn tokenish() -> impl Strategy<Value = String> {
    let b64 = |s: String| data_encoding::BASE64URL_NOPAD.encode(s.as_bytes());
    let part = prop_oneof![
        "[A-Za-z0-9_=-]{0,40}",
        any::<String>().prop_map(b64),
        prop_oneof![
            Just(r#"{"alg":"HS256"}"#.to_string()),
            Just(r#"{"alg":"none"}"#.to_string()),
            Just(r#"{"alg":"RS256","crit":["b64"],"b64":false}"#.to_string()),
            Just(r#"{"alg":"ES256","kid":1}"#.to_string()),
            Just(r#"{"sub":"1","exp":1e308,"nbf":-1}"#.to_string()),
            Just(r#"{"aud":[1,{}],"iss":null,"channels":[null]}"#.to_string()),
        ]
        .prop_map(b64),
    ];
    prop::collection::vec(part, 1..5).prop_map(|parts| parts.join("."))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("sub".to_string()),
                    Just("exp".to_string()),
                    Just("nbf".to_string()),
                    Just("iat".to_string()),
                    Just("aud".to_string()),
                    Just("iss".to_string()),
                    Just("channel".to_string()),
                    Just("channels".to_string()),
                    Just("info".to_string()),
                    Just("meta".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>(), now in any::<u64>()) {
        for v in verifiers() {
            let _ = v.verify_connect(&s, now);
            let _ = v.verify_subscribe(&s, now);
        }
    }

    #[test]
    fn tokenish_strings_never_panic(s in tokenish(), now in any::<u64>()) {
        for v in verifiers() {
            if let Err(TokenError::Invalid(reason)) = v.verify_connect(&s, now) {
                prop_assert!(!reason.is_empty());
            }
            let _ = v.verify_subscribe(&s, now);
        }
    }

    /// Any claims, well signed: no panic, and an accepted token says what
    /// was signed.
    #[test]
    fn signed_claims(claims in json_value(), now in any::<u64>(), alg in 0..3usize) {
        let alg = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512][alg];
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        let v = &verifiers()[0];
        match v.verify_connect(&token, now) {
            Ok(c) => {
                let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
                prop_assert_eq!(c.user, sub);
                if let Some(exp) = c.expires_at {
                    prop_assert!(now < exp);
                }
                // (serde_json's float parsing may differ in the last digit.)
                let info = claims.get("info").filter(|i| !i.is_null());
                if !info.is_some_and(has_float) {
                    prop_assert_eq!(c.info.as_ref(), info);
                }
            }
            Err(TokenError::Expired) => {
                prop_assert!(claims.get("exp").is_some_and(Value::is_number));
            }
            Err(TokenError::Invalid(_)) => {}
        }
        if let Ok(s) = v.verify_subscribe(&token, now) {
            prop_assert_eq!(Some(s.channel.as_str()), claims.get("channel").and_then(Value::as_str));
        }
    }

    #[test]
    fn arbitrary_config_text_never_panics(text in any::<String>()) {
        check_config(&text)?;
    }

    /// Text built from the real keys, with values of every type.
    #[test]
    fn keyish_config_never_panics(lines in prop::collection::vec(config_line(), 0..12)) {
        check_config(&lines.concat())?;
    }

    #[test]
    fn policy_never_panics(room in ".{0,24}", user in "[0-9a-z,#]{0,6}", token_room in ".{0,8}", sub in any::<bool>()) {
        let user = User::new(user);
        let open = Policy::open();
        if !room.is_empty() {
            prop_assert!(open.decide_subscribe(&user, &room, None).is_ok());
            prop_assert!(open.decide_publish(&user, &room, false).is_ok());
        }
        let all = NamespaceOptions { allow_user_limited_channels: true, ..NamespaceOptions::allow_all() };
        let p = Policy::new(all, vec![Namespace { name: "ns".into(), options: all }]);
        let claims = SubClaims { user: user.id.clone(), channel: token_room.clone(), ..SubClaims::default() };
        let r = p.decide_subscribe(&user, &room, sub.then_some(&claims));
        if let Err(d) = &r {
            let _ = (d.centrifugo(), d.seed_close(), d.reason(), d.to_string());
        }
        if sub && r.is_ok() {
            prop_assert_eq!(&token_room, &room);
        }
        let _ = p.decide_publish(&user, &room, sub);
        let _ = p.decide_history(&user, &room, sub);
        let _ = p.decide_presence(&user, &room, sub);
        let _ = RoomName::parse(&room);
        let _ = user_listed(&room, &user.id);
    }

    #[test]
    fn origin_never_panics(origin in ".{0,40}", host in ".{0,24}", pats in prop::collection::vec(".{0,16}", 0..3)) {
        let pats: Vec<Pattern> = pats.iter().map(|p| Pattern::new(p)).collect();
        let _ = origin_allowed(Some(&origin), Some(&host), &pats);
        let _ = origin_allowed(Some(&origin), None, &[]);
        prop_assert!(origin_allowed(None, Some(&host), &pats));
        prop_assert!(origin_allowed(Some(&origin), None, &[Pattern::new("*")]));
        // A pattern without wildcards matches itself, in any ASCII case.
        if !origin.contains(['*', '?']) && origin.trim() == origin {
            prop_assert!(origin_allowed(Some(&origin.to_ascii_uppercase()), None, &[Pattern::new(&origin)]));
        }
    }
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    match settings::parse("f.toml", text) {
        Err(e) => {
            let line = e.to_string();
            prop_assert!(!line.contains('\n') && !line.contains('\r'), "{:?}", line);
            prop_assert!(line.starts_with("f.toml"), "{}", line);
            if let Some(l) = e.line {
                prop_assert!(
                    l >= 1 && l <= text.split('\n').count(),
                    "line {} of {:?}",
                    l,
                    text
                );
            }
        }
        Ok(s) => {
            for f in &s.flags {
                let _ = f.cli_arg();
            }
            for pem in [None, Some(RSA_PUBLIC), Some(b"junk".as_slice())] {
                if let Err(e) = s.build_auth(pem) {
                    prop_assert!(!e.to_string().contains('\n'));
                }
            }
        }
    }
    Ok(())
}

fn config_line() -> impl Strategy<Value = String> {
    let mut keys: Vec<String> = FLAG_KEYS.iter().map(|(k, _)| k.to_string()).collect();
    keys.extend(
        [
            "token_hmac_secret",
            "token_public_key",
            "token_audience",
            "token_issuer",
            "token_algorithms",
            "token_expire_grace",
            "allowed_origins",
            "api_key",
            "allow_anonymous_connect_without_token",
            "name",
            "nope",
        ]
        .map(String::from),
    );
    keys.extend(NAMESPACE_KEYS.iter().map(|k| k.to_string()));
    let value = prop_oneof![
        Just("true".to_string()),
        Just("\"on\"".to_string()),
        Just("\"25s\"".to_string()),
        Just("\"5h\"".to_string()),
        Just("\"chat\"".to_string()),
        Just("\"127.0.0.1:80\"".to_string()),
        Just("[\"HS256\", \"none\"]".to_string()),
        Just("[\"https://*.x\"]".to_string()),
        Just("{ a = 1 }".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "\"[ -~]{0,10}\"",
    ];
    prop_oneof![
        4 => (prop::sample::select(keys), value).prop_map(|(k, v)| format!("{k} = {v}\n")),
        1 => Just("[default_namespace]\n".to_string()),
        1 => Just("[[namespace]]\n".to_string()),
        1 => Just("[[namespace]]\nname = \"chat\"\n".to_string()),
        1 => "[ -~]{0,20}\n",
    ]
}

#[test]
fn a_signed_token_round_trips() {
    // The properties above would pass vacuously if nothing ever verified.
    let key = EncodingKey::from_secret(SECRET).unwrap();
    let claims = json!({"sub": "1", "exp": 10, "info": [1]});
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    assert_eq!(verifiers()[0].verify_connect(&token, 9).unwrap().user, "1");
}
