//! Connection and subscription tokens: JWTs signed with HMAC (HS256/384/512,
//! a shared secret), RSA (RS256/384/512) or ECDSA (ES256 on P-256, ES384 on
//! P-384), checked against the keys a [`TokenVerifier`] holds.
//!
//! Verification is pure: key material comes in as bytes (the driver reads
//! files), the time as wall-clock seconds since the Unix epoch. The
//! `jsonwebtoken` crate checks the token's shape and signature only: its own
//! `exp`/`nbf`/`aud`/`iss`/`sub` validation is switched off (it would read
//! the system clock), and this module checks every claim itself against the
//! `now` it is given. What `jsonwebtoken` 12 does with the [`Validation`] built
//! here (read in its `validation.rs`): no claim is required, `validate_exp`
//! and `validate_nbf` are false so `get_current_timestamp` (its only clock
//! read) is never called, `iss`/`sub` are unset so neither is compared, and
//! `validate_aud` is false so the audience is not looked at.
//!
//! # Rules
//!
//! - The header's `alg` must be one this verifier holds a key for (and, if
//!   [`TokenKeys::algorithms`] is given, one of those): `none`, an unknown
//!   name, or an algorithm of another key family is [`TokenError::Invalid`].
//! - The signature is checked before any claim, so an expired token with a
//!   bad signature is Invalid, not Expired.
//! - `exp` (optional): the token is [`TokenError::Expired`] once
//!   `now >= exp` (as Centrifugo: valid while `now < exp`).
//! - `nbf` and `iat` (optional): a token not valid before `nbf`, or issued
//!   after `now`, is Invalid, with [`CLOCK_SKEW_SECS`] of allowance for the
//!   issuer's clock running ahead.
//! - Numeric dates are JSON numbers ≥ 0 (fractions are truncated); anything
//!   else (a string, a negative number) makes the token Invalid.
//! - `aud` / `iss` are compared only when configured; then a token without
//!   them is Invalid. `aud` may be a string or an array of strings.
//! - `sub` must be a string if present; absent or empty means anonymous.
//! - Other claims Centrifugo knows (`subs`, `b64info`, `expire_at`, `jti`,
//!   …) are ignored.
//!
//! [`Validation`]: jsonwebtoken::Validation

use jsonwebtoken::{Algorithm, DecodingKey, Validation, crypto::CryptoProvider};
use serde::Deserialize;
use serde_json::Value;

/// Allowance, in seconds, for an issuer whose clock runs ahead: a token whose
/// `nbf` or `iat` is at most this far in the future is still accepted.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// The algorithms roomcast verifies, by their JWT names.
pub const SUPPORTED_ALGORITHMS: [&str; 8] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
];

/// Why a token was refused. The node closes a connection with 3500 "invalid
/// token" for [`Invalid`](Self::Invalid) and answers 109 "token expired" for
/// [`Expired`](Self::Expired) (the SDKs then fetch a new token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Well signed, but `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else; the reason is for logs, never for the client.
    #[error("invalid token: {0}")]
    Invalid(String),
}

fn invalid(reason: impl Into<String>) -> TokenError {
    TokenError::Invalid(reason.into())
}

/// The claims of a verified connection token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnClaims {
    /// `sub`: the user id; empty means anonymous.
    pub user: String,
    /// `exp`: when the connection's token expires (seconds since the epoch).
    pub expires_at: Option<u64>,
    /// `iat`: when the token was issued.
    pub issued_at: Option<u64>,
    /// `info`: public JSON about the connection (shown in presence,
    /// join/leave and publications).
    pub info: Option<Value>,
    /// `channels`: rooms to subscribe the connection to at connect
    /// (server-side subscriptions; check them with
    /// [`Policy::decide_token_channel`](super::Policy::decide_token_channel)).
    pub channels: Vec<String>,
    /// `meta`: private JSON, never shown to clients.
    pub meta: Option<Value>,
}

impl ConnClaims {
    /// The anonymous identity (no token, or tokens not configured).
    pub fn anonymous() -> ConnClaims {
        ConnClaims::default()
    }

    /// Who this is, for the [`Policy`](super::Policy).
    pub fn user(&self) -> super::User {
        super::User::new(self.user.clone())
    }
}

/// The claims of a verified subscription token. The policy checks them
/// against the connection and the room
/// ([`Policy::decide_subscribe`](super::Policy::decide_subscribe)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubClaims {
    /// `sub`: must equal the connection's user (absent: anonymous).
    pub user: String,
    /// `channel`: must equal the room subscribed to.
    pub channel: String,
    /// `exp`: when the subscription's token expires.
    pub expires_at: Option<u64>,
    /// `iat`: when the token was issued.
    pub issued_at: Option<u64>,
    /// `info`: the channel info (`chan_info`) of this subscription.
    pub info: Option<Value>,
}

/// Key material and claim checks for a [`TokenVerifier`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenKeys<'a> {
    /// The HMAC secret (HS256/384/512). Must not be empty.
    pub hmac_secret: Option<&'a [u8]>,
    /// A PEM public key: `BEGIN PUBLIC KEY` (RSA, EC P-256 or EC P-384) or
    /// `BEGIN RSA PUBLIC KEY` (PKCS#1).
    pub public_key_pem: Option<&'a [u8]>,
    /// Required `aud`, when set.
    pub audience: Option<&'a str>,
    /// Required `iss`, when set.
    pub issuer: Option<&'a str>,
    /// Restricts the accepted algorithms (JWT names, see
    /// [`SUPPORTED_ALGORITHMS`]); default: every algorithm of the keys given.
    pub algorithms: Option<&'a [&'a str]>,
}

/// A key or algorithm setting that cannot be used: a start-up error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither an HMAC secret nor a public key was given.
    #[error("no token key: set token_hmac_secret or token_public_key")]
    NoKey,
    /// The HMAC secret is empty.
    #[error("the HMAC secret is empty")]
    EmptySecret,
    /// The public key is not a PEM public key roomcast can use.
    #[error("{0}")]
    BadPublicKey(String),
    /// An algorithm name roomcast does not know.
    #[error(
        "unknown algorithm {0:?}: expected one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384"
    )]
    UnknownAlgorithm(String),
    /// An algorithm without a key to verify it.
    #[error("algorithm {alg} needs {needs}")]
    NoKeyFor {
        /// The algorithm.
        alg: String,
        /// What key it needs.
        needs: &'static str,
    },
    /// `audience` or `issuer` is set but empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
}

/// What kind of public key was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyKind {
    /// RSA: RS256, RS384, RS512.
    Rsa,
    /// EC P-256: ES256.
    P256,
    /// EC P-384: ES384.
    P384,
}

/// Verifies connection and subscription tokens. Cheap to share (`Sync`);
/// build it once at start-up.
#[derive(Clone)]
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    public: Option<(DecodingKey, PublicKeyKind)>,
    allowed: Vec<Algorithm>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("public", &self.public.as_ref().map(|(_, k)| *k))
            .field("allowed", &self.allowed)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        _ => return None,
    })
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        _ => "other",
    }
}

/// Reads a PEM public key, checking that it is a key the backend can verify
/// with (so a bad key fails at start-up, not at every token).
fn load_public_key(pem_bytes: &[u8]) -> Result<(DecodingKey, PublicKeyKind), KeyError> {
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::pkcs1::DecodeRsaPublicKey as _;

    let bad = |m: &str| KeyError::BadPublicKey(m.to_string());
    let pem = pem::parse(pem_bytes).map_err(|_| bad("not a PEM file (no BEGIN/END block)"))?;
    match pem.tag() {
        "RSA PUBLIC KEY" => {
            rsa::PublicKey::from_pkcs1_der(pem.contents())
                .map_err(|e| bad(&format!("not a valid RSA public key: {e}")))?;
            let key = DecodingKey::from_rsa_pem(pem_bytes)
                .map_err(|e| bad(&format!("not a valid RSA public key: {e}")))?;
            Ok((key, PublicKeyKind::Rsa))
        }
        "PUBLIC KEY" => {
            let der = pem.contents();
            if rsa::PublicKey::from_public_key_der(der).is_ok() {
                let key = DecodingKey::from_rsa_pem(pem_bytes)
                    .map_err(|e| bad(&format!("not a valid RSA public key: {e}")))?;
                return Ok((key, PublicKeyKind::Rsa));
            }
            if let Ok(k) = p256::PublicKey::from_public_key_der(der) {
                let point = p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&k, false);
                let key = DecodingKey::from_ec_der(point.as_bytes());
                return Ok((key, PublicKeyKind::P256));
            }
            if let Ok(k) = p384::PublicKey::from_public_key_der(der) {
                let point = p384::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&k, false);
                let key = DecodingKey::from_ec_der(point.as_bytes());
                return Ok((key, PublicKeyKind::P384));
            }
            Err(bad(
                "unsupported public key: expected RSA, EC P-256 or EC P-384",
            ))
        }
        tag => Err(KeyError::BadPublicKey(format!(
            "expected a public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY), found BEGIN {}",
            tag.chars().take(40).collect::<String>()
        ))),
    }
}

impl TokenVerifier {
    /// A verifier for these keys. Errors: no key at all, an empty secret, a
    /// PEM that is not a usable public key, an unknown algorithm name or one
    /// without a key.
    pub fn new(keys: TokenKeys<'_>) -> Result<TokenVerifier, KeyError> {
        // jsonwebtoken picks its backend from crate features and panics at
        // decode time if it cannot (another crate in the build enabling a
        // second backend): install ours now, once, so decoding never panics.
        if CryptoProvider::try_get_default().is_none() {
            let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        }
        let hmac = match keys.hmac_secret {
            Some([]) => return Err(KeyError::EmptySecret),
            Some(secret) => {
                Some(DecodingKey::from_secret(secret).map_err(|_| KeyError::EmptySecret)?)
            }
            None => None,
        };
        let public = match keys.public_key_pem {
            Some(pem) => Some(load_public_key(pem)?),
            None => None,
        };
        if hmac.is_none() && public.is_none() {
            return Err(KeyError::NoKey);
        }
        let kind = public.as_ref().map(|(_, k)| *k);
        let has_key = |alg: Algorithm| match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => hmac.is_some(),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                kind == Some(PublicKeyKind::Rsa)
            }
            Algorithm::ES256 => kind == Some(PublicKeyKind::P256),
            Algorithm::ES384 => kind == Some(PublicKeyKind::P384),
            _ => false,
        };
        let allowed = match keys.algorithms {
            Some(names) => {
                let mut allowed = Vec::new();
                for name in names {
                    let alg = parse_algorithm(name)
                        .ok_or_else(|| KeyError::UnknownAlgorithm(name.to_string()))?;
                    if !has_key(alg) {
                        let needs = match alg {
                            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                                "token_hmac_secret"
                            }
                            Algorithm::ES256 => "an EC P-256 token_public_key",
                            Algorithm::ES384 => "an EC P-384 token_public_key",
                            _ => "an RSA token_public_key",
                        };
                        return Err(KeyError::NoKeyFor {
                            alg: name.to_string(),
                            needs,
                        });
                    }
                    if !allowed.contains(&alg) {
                        allowed.push(alg);
                    }
                }
                allowed
            }
            None => SUPPORTED_ALGORITHMS
                .iter()
                .filter_map(|n| parse_algorithm(n))
                .filter(|a| has_key(*a))
                .collect(),
        };
        let nonempty = |v: Option<&str>, what| match v {
            Some("") => Err(KeyError::Empty(what)),
            v => Ok(v.map(str::to_string)),
        };
        Ok(TokenVerifier {
            hmac,
            public,
            allowed,
            audience: nonempty(keys.audience, "token_audience")?,
            issuer: nonempty(keys.issuer, "token_issuer")?,
        })
    }

    /// The algorithms this verifier accepts, by JWT name.
    pub fn algorithms(&self) -> Vec<&'static str> {
        self.allowed.iter().map(|a| algorithm_name(*a)).collect()
    }

    /// The kind of the configured public key, if any.
    pub fn public_key_kind(&self) -> Option<PublicKeyKind> {
        self.public.as_ref().map(|(_, k)| *k)
    }

    /// Verifies a connection token at wall-clock time `now` (seconds since
    /// the Unix epoch).
    pub fn verify_connect(&self, token: &str, now: u64) -> Result<ConnClaims, TokenError> {
        let raw = self.decode(token, now)?;
        let channels = match raw.channels {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(invalid("channels must be an array of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("channels must be an array of strings")),
        };
        Ok(ConnClaims {
            user: raw.sub,
            expires_at: raw.exp,
            issued_at: raw.iat,
            info: raw.info,
            channels,
            meta: raw.meta,
        })
    }

    /// Verifies a subscription token at wall-clock time `now`. Its `sub` and
    /// `channel` are checked against the connection and the room by
    /// [`Policy::decide_subscribe`](super::Policy::decide_subscribe).
    pub fn verify_subscribe(&self, token: &str, now: u64) -> Result<SubClaims, TokenError> {
        let raw = self.decode(token, now)?;
        let channel = match raw.channel {
            Some(Value::String(c)) if !c.is_empty() => c,
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(invalid("subscription token without channel"));
            }
            Some(_) => return Err(invalid("channel must be a string")),
        };
        Ok(SubClaims {
            user: raw.sub,
            channel,
            expires_at: raw.exp,
            issued_at: raw.iat,
            info: raw.info,
        })
    }

    fn decode(&self, token: &str, now: u64) -> Result<Checked, TokenError> {
        let alg = self.header_algorithm(token)?;
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            _ => self.public.as_ref().map(|(k, _)| k),
        }
        .ok_or_else(|| invalid(format!("no key for {}", algorithm_name(alg))))?;

        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.aud = None;
        validation.iss = None;
        validation.sub = None;

        let data = jsonwebtoken::decode::<RawClaims>(token, key, &validation)
            .map_err(|e| invalid(describe(e.kind())))?;
        self.check(data.claims, now)
    }

    /// The header's `alg`, if it is one this verifier accepts.
    fn header_algorithm(&self, token: &str) -> Result<Algorithm, TokenError> {
        let header_b64 = token
            .split('.')
            .next()
            .filter(|_| token.split('.').count() == 3)
            .ok_or_else(|| invalid("not a JWT (expected three dot-separated parts)"))?;
        let header_json = data_encoding::BASE64URL_NOPAD
            .decode(header_b64.trim_end_matches('=').as_bytes())
            .map_err(|_| invalid("header is not base64url"))?;
        #[derive(Deserialize)]
        struct Header {
            alg: Option<Value>,
        }
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|_| invalid("header is not a JSON object"))?;
        let name = match header.alg {
            Some(Value::String(s)) => s,
            _ => return Err(invalid("header without alg")),
        };
        if name.eq_ignore_ascii_case("none") {
            return Err(invalid("alg none is refused"));
        }
        let shown: String = name.chars().take(16).collect();
        let alg = parse_algorithm(&name)
            .ok_or_else(|| invalid(format!("unsupported algorithm {shown:?}")))?;
        if !self.allowed.contains(&alg) {
            return Err(invalid(format!("algorithm {shown} is not configured")));
        }
        Ok(alg)
    }

    fn check(&self, raw: RawClaims, now: u64) -> Result<Checked, TokenError> {
        let exp = numeric_date(raw.exp, "exp")?;
        let nbf = numeric_date(raw.nbf, "nbf")?;
        let iat = numeric_date(raw.iat, "iat")?;
        let sub = match raw.sub {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(_) => return Err(invalid("sub must be a string")),
        };
        if let Some(nbf) = nbf
            && now.saturating_add(CLOCK_SKEW_SECS) < nbf
        {
            return Err(invalid("token not valid yet (nbf)"));
        }
        if let Some(iat) = iat
            && iat > now.saturating_add(CLOCK_SKEW_SECS)
        {
            return Err(invalid("token issued in the future (iat)"));
        }
        if let Some(want) = &self.issuer {
            match raw.iss {
                Some(Value::String(iss)) if &iss == want => {}
                _ => return Err(invalid("issuer mismatch")),
            }
        }
        if let Some(want) = &self.audience {
            let ok = match &raw.aud {
                Some(Value::String(aud)) => aud == want,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(invalid("audience mismatch"));
            }
        }
        // Last: an expired token that is invalid for another reason is
        // Invalid (a new token would not help).
        if let Some(exp) = exp
            && now >= exp
        {
            return Err(TokenError::Expired);
        }
        Ok(Checked {
            sub,
            exp,
            iat,
            info: raw.info.filter(|v| !v.is_null()),
            meta: raw.meta.filter(|v| !v.is_null()),
            channels: raw.channels,
            channel: raw.channel,
        })
    }
}

/// Claims as they came, typed only as JSON: every check is ours.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    info: Option<Value>,
    #[serde(default)]
    meta: Option<Value>,
    #[serde(default)]
    channels: Option<Value>,
    #[serde(default)]
    channel: Option<Value>,
}

struct Checked {
    sub: String,
    exp: Option<u64>,
    iat: Option<u64>,
    info: Option<Value>,
    meta: Option<Value>,
    channels: Option<Value>,
    channel: Option<Value>,
}

/// A JWT NumericDate: a JSON number ≥ 0; fractions are truncated.
fn numeric_date(v: Option<Value>, name: &str) -> Result<Option<u64>, TokenError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(invalid(format!("{name} must be a number of seconds ≥ 0"))),
                }
            }
        }
        Some(_) => Err(invalid(format!("{name} must be a number"))),
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => "bad signature".into(),
        K::InvalidToken => "malformed token".into(),
        K::InvalidAlgorithm | K::MissingAlgorithm => "algorithm not allowed".into(),
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            "key does not fit the algorithm".into()
        }
        K::Base64(_) => "not base64url".into(),
        K::Json(_) => "claims are not a JSON object of the expected shape".into(),
        K::Utf8(_) => "not UTF-8".into(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}
