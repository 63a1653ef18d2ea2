//! Authentication and authorization, pure: tokens ([`jwt`]), namespaces and
//! permissions ([`policy`]), the upgrade's `Origin` check ([`origin`]), and
//! [`Auth`], which holds all three and answers each question a node asks.
//! Nothing here reads a file or the clock: key material comes in as bytes
//! and time as wall-clock seconds since the Unix epoch.
//!
//! # Modes
//!
//! - **Open** (no token key and no namespace configured, [`Auth::open`]):
//!   every connection is anonymous (tokens are ignored) and may join and
//!   publish everywhere. The tutorial server's behaviour.
//! - **Configured** (a token key, or any `[default_namespace]` /
//!   `[[namespace]]`): default deny; the namespaces' flags grant.
//!   Without a token key, tokens are ignored and everyone is anonymous.
//!
//! # What the node asks, and what it answers
//!
//! | moment | call | on refusal |
//! |---|---|---|
//! | any WebSocket upgrade | [`Auth::origin_allowed`] | HTTP 403 |
//! | seed-protocol upgrade (`?token=`) | [`Auth::seed_upgrade`] | HTTP 401 |
//! | seed `SUBSCRIBE` | [`Auth::seed_subscribe`] | close 1008 "permission denied" ([`Denial::seed_close`]) |
//! | seed `sendMessage` | [`Auth::seed_publish`] | close 1008 "permission denied" |
//! | Centrifugo `connect` | [`Auth::connect`] | [`ConnectDenied::centrifugo`]: 109 error, or close 3500 |
//! | Centrifugo `refresh` | [`Auth::refresh`] | the same |
//! | token `channels` at connect | [`Policy::decide_token_channel`] | skip the room (or 102) |
//! | Centrifugo `subscribe` | [`Auth::subscribe`] | [`Denial::centrifugo`]: 102 / 103 / 109 error, or close 3500 |
//! | Centrifugo `publish` | [`Auth::publish`] | the same |
//! | history / presence (later) | [`Policy::decide_history`], [`Policy::decide_presence`] | the same |
//! | HTTP API | [`Auth::api_key_matches`] | HTTP 401 |
//!
//! A connection's token expiry (`exp`, in [`ConnClaims::expires_at`]) is the
//! node's to enforce, with [`Auth::expire_grace`] of grace for a refresh
//! before it closes 3005 (Centrifugo's 25 s by default).

pub mod jwt;
pub mod origin;
pub mod policy;

use std::time::Duration;

pub use jwt::{
    CLOCK_SKEW_SECS, ConnClaims, KeyError, PublicKeyKind, SUPPORTED_ALGORITHMS, SubClaims,
    TokenError, TokenKeys, TokenVerifier,
};
pub use origin::{Pattern, origin_allowed};
pub use policy::{
    Answer, Denial, GrantSource, Namespace, NamespaceOptions, Policy, RoomName, SEED_DENIED,
    SubscribeGrant, user_listed, valid_namespace_name,
};

use crate::codec::centrifugo::{Disconnect, ErrorCode};

/// Who a connection is: its user id, empty for anonymous.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct User {
    /// The token's `sub`; empty means anonymous.
    pub id: String,
}

impl User {
    /// The user with this id (empty: anonymous).
    pub fn new(id: impl Into<String>) -> User {
        User { id: id.into() }
    }

    /// An anonymous user.
    pub fn anonymous() -> User {
        User::default()
    }

    /// Whether the id is empty.
    pub fn is_anonymous(&self) -> bool {
        self.id.is_empty()
    }
}

/// The auth part of the configuration (the `roomcast.toml` keys; see
/// [`crate::settings`]). `Default` is open mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `token_hmac_secret`: HS256/384/512 tokens.
    pub token_hmac_secret: Option<String>,
    /// `token_public_key`: the path of a PEM public key (RSA, EC P-256 or
    /// P-384). The driver reads it and hands the bytes to [`Auth::new`].
    pub token_public_key: Option<String>,
    /// `token_audience`: the required `aud`.
    pub token_audience: Option<String>,
    /// `token_issuer`: the required `iss`.
    pub token_issuer: Option<String>,
    /// `token_algorithms`: restricts the accepted algorithms (default: all
    /// the keys support).
    pub token_algorithms: Option<Vec<String>>,
    /// `token_expire_grace`: time given to refresh an expired connection
    /// token before closing 3005 (default 25 s).
    pub token_expire_grace: Duration,
    /// `allowed_origins`: glob patterns; empty: the same-host rule.
    pub allowed_origins: Vec<Pattern>,
    /// `api_key`: the HTTP API's key (`X-API-Key`).
    pub api_key: Option<String>,
    /// `allow_anonymous_connect_without_token`: a Centrifugo `connect`
    /// without a token is anonymous instead of refused (when a key is set).
    pub allow_anonymous_connect_without_token: bool,
    /// `[default_namespace]`: rooms without a namespace.
    pub default_namespace: Option<NamespaceOptions>,
    /// `[[namespace]]` tables.
    pub namespaces: Vec<Namespace>,
}

/// Centrifugo's grace for a refresh after a connection token expires.
pub const DEFAULT_EXPIRE_GRACE: Duration = Duration::from_secs(25);

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            token_hmac_secret: None,
            token_public_key: None,
            token_audience: None,
            token_issuer: None,
            token_algorithms: None,
            token_expire_grace: DEFAULT_EXPIRE_GRACE,
            allowed_origins: Vec::new(),
            api_key: None,
            allow_anonymous_connect_without_token: false,
            default_namespace: None,
            namespaces: Vec::new(),
        }
    }
}

/// Why a connection (its token) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectDenied {
    /// The token expired: Centrifugo error 109 (the SDK fetches a new one).
    #[error("token expired")]
    Expired,
    /// The token is invalid (the reason is for logs): close 3500.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A token key is configured, and no token was given (anonymous
    /// connections are not allowed).
    #[error("a token is required")]
    TokenRequired,
}

impl From<TokenError> for ConnectDenied {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => ConnectDenied::Expired,
            TokenError::Invalid(r) => ConnectDenied::Invalid(r),
        }
    }
}

impl ConnectDenied {
    /// The Centrifugo protocol's answer: error 109 for an expired token,
    /// else close 3500 "invalid token" (terminal, so an SDK without a token
    /// does not loop).
    pub fn centrifugo(&self) -> Answer {
        match self {
            ConnectDenied::Expired => Answer::Error(ErrorCode::TOKEN_EXPIRED),
            _ => Answer::Close(Disconnect::INVALID_TOKEN),
        }
    }

    /// The seed protocol's answer at the upgrade: HTTP 401.
    pub fn http_status(&self) -> u16 {
        401
    }

    /// The body of that 401: what is wrong, without the reason an invalid
    /// token was refused for (that is for logs, never for the client).
    pub fn http_body(&self) -> &'static str {
        match self {
            ConnectDenied::Expired => "token expired\n",
            ConnectDenied::Invalid(_) => "invalid token\n",
            ConnectDenied::TokenRequired => "a token is required\n",
        }
    }
}

/// Tokens, permissions and origins, built once at start-up and shared by
/// every connection (`Sync`).
#[derive(Debug, Clone)]
pub struct Auth {
    verifier: Option<TokenVerifier>,
    policy: Policy,
    origins: Vec<Pattern>,
    anonymous_without_token: bool,
    expire_grace: Duration,
    api_key: Option<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth::open()
    }
}

impl Auth {
    /// Open mode, with the same-host Origin rule.
    pub fn open() -> Auth {
        Auth {
            verifier: None,
            policy: Policy::open(),
            origins: Vec::new(),
            anonymous_without_token: true,
            expire_grace: DEFAULT_EXPIRE_GRACE,
            api_key: None,
        }
    }

    /// From settings. `public_key_pem`: the contents of the file
    /// `settings.token_public_key` names (read by the driver); ignored when
    /// that is `None`, required when it is set.
    pub fn new(settings: &AuthSettings, public_key_pem: Option<&[u8]>) -> Result<Auth, KeyError> {
        let public_key_pem = match (&settings.token_public_key, public_key_pem) {
            (Some(_), Some(pem)) => Some(pem),
            (Some(_), None) => {
                return Err(KeyError::BadPublicKey(
                    "the public key file was not read".into(),
                ));
            }
            (None, _) => None,
        };
        let algorithms: Option<Vec<&str>> = settings
            .token_algorithms
            .as_ref()
            .map(|v| v.iter().map(String::as_str).collect());
        let verifier = if settings.token_hmac_secret.is_some() || public_key_pem.is_some() {
            Some(TokenVerifier::new(TokenKeys {
                hmac_secret: settings.token_hmac_secret.as_deref().map(str::as_bytes),
                public_key_pem,
                audience: settings.token_audience.as_deref(),
                issuer: settings.token_issuer.as_deref(),
                algorithms: algorithms.as_deref(),
            })?)
        } else {
            if let Some(a) = algorithms.as_ref().and_then(|a| a.first()) {
                return Err(KeyError::NoKeyFor {
                    alg: a.to_string(),
                    needs: "token_hmac_secret or token_public_key",
                });
            }
            None
        };
        let configured = verifier.is_some()
            || settings.default_namespace.is_some()
            || !settings.namespaces.is_empty();
        let policy = if configured {
            Policy::new(
                settings.default_namespace.unwrap_or_default(),
                settings.namespaces.clone(),
            )
        } else {
            Policy::open()
        };
        Ok(Auth {
            anonymous_without_token: verifier.is_none()
                || settings.allow_anonymous_connect_without_token,
            verifier,
            policy,
            origins: settings.allowed_origins.clone(),
            expire_grace: settings.token_expire_grace,
            api_key: settings.api_key.clone(),
        })
    }

    /// Whether this is open mode (no key, no namespace).
    pub fn is_open(&self) -> bool {
        self.policy.is_open()
    }

    /// Whether a token key is configured (then seed-protocol connections
    /// need a valid `?token=`).
    pub fn tokens_configured(&self) -> bool {
        self.verifier.is_some()
    }

    /// The token verifier, when a key is configured.
    pub fn verifier(&self) -> Option<&TokenVerifier> {
        self.verifier.as_ref()
    }

    /// The permission rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// How long after its token's `exp` a connection may still refresh
    /// before the node closes it 3005.
    pub fn expire_grace(&self) -> Duration {
        self.expire_grace
    }

    /// The Centrifugo `connect` command's token (`None` or empty: no token)
    /// at wall-clock `now`. Without a key the token is ignored and the
    /// connection anonymous.
    pub fn connect(&self, token: Option<&str>, now: u64) -> Result<ConnClaims, ConnectDenied> {
        let token = token.filter(|t| !t.is_empty());
        match (&self.verifier, token) {
            (None, _) => Ok(ConnClaims::anonymous()),
            (Some(v), Some(t)) => Ok(v.verify_connect(t, now)?),
            (Some(_), None) if self.anonymous_without_token => Ok(ConnClaims::anonymous()),
            (Some(_), None) => Err(ConnectDenied::TokenRequired),
        }
    }

    /// The Centrifugo `refresh` command: a new connection token for the same
    /// user (another user's is Invalid, as Centrifugo).
    pub fn refresh(&self, user: &User, token: &str, now: u64) -> Result<ConnClaims, ConnectDenied> {
        let Some(v) = &self.verifier else {
            return Ok(ConnClaims {
                user: user.id.clone(),
                ..ConnClaims::default()
            });
        };
        let claims = v.verify_connect(token, now)?;
        if claims.user != user.id {
            return Err(ConnectDenied::Invalid("refresh token user mismatch".into()));
        }
        Ok(claims)
    }

    /// A seed-protocol upgrade with its `?token=` (`None` or empty: none).
    /// With a token key configured a valid token is required (refuse with
    /// [`ConnectDenied::http_status`], 401); without one, anonymous.
    pub fn seed_upgrade(&self, token: Option<&str>, now: u64) -> Result<ConnClaims, ConnectDenied> {
        let token = token.filter(|t| !t.is_empty());
        match (&self.verifier, token) {
            (None, _) => Ok(ConnClaims::anonymous()),
            (Some(v), Some(t)) => Ok(v.verify_connect(t, now)?),
            (Some(_), None) => Err(ConnectDenied::TokenRequired),
        }
    }

    /// A Centrifugo `subscribe` with its optional subscription token
    /// (`None` or empty: none). Verifies the token (expired: 109; invalid:
    /// 103, as Centrifugo), then [`Policy::decide_subscribe`].
    pub fn subscribe(
        &self,
        user: &User,
        room: &str,
        token: Option<&str>,
        now: u64,
    ) -> Result<SubscribeGrant, Denial> {
        let token = token.filter(|t| !t.is_empty());
        let claims = match (&self.verifier, token) {
            (Some(v), Some(t)) => match v.verify_subscribe(t, now) {
                Ok(c) => Some(c),
                Err(TokenError::Expired) => {
                    // An unknown namespace answers first, as Centrifugo.
                    self.policy.resolve(room)?;
                    return Err(Denial::TokenExpired);
                }
                Err(TokenError::Invalid(r)) => {
                    self.policy.resolve(room)?;
                    return Err(Denial::PermissionDenied(
                        format!("invalid subscription token: {r}").into(),
                    ));
                }
            },
            _ => None,
        };
        self.policy.decide_subscribe(user, room, claims.as_ref())
    }

    /// A Centrifugo `publish`.
    pub fn publish(&self, user: &User, room: &str, is_subscriber: bool) -> Result<(), Denial> {
        self.policy.decide_publish(user, room, is_subscriber)
    }

    /// A seed-protocol `SUBSCRIBE` (no subscription tokens there, so `$`
    /// rooms are refused unless open). Refuse with [`SEED_DENIED`].
    pub fn seed_subscribe(&self, user: &User, room: &str) -> Result<(), Denial> {
        self.policy.decide_subscribe(user, room, None).map(|_| ())
    }

    /// A seed-protocol `sendMessage`. Refuse with [`SEED_DENIED`].
    pub fn seed_publish(&self, user: &User, room: &str, is_subscriber: bool) -> Result<(), Denial> {
        self.policy.decide_publish(user, room, is_subscriber)
    }

    /// The Origin check of an upgrade (see [`origin`]).
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        origin_allowed(origin, host, &self.origins)
    }

    /// Whether a server API request may proceed as to its `Origin`: a
    /// request without one (an API client) may; a browser's may from the
    /// node's own origin (the admin page) or one `allowed_origins` allows.
    /// Without this, any web page open in an operator's browser could
    /// post to a key-less (`--api-insecure`) API.
    pub fn api_origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        origin_allowed(origin, host, &[])
            || (!self.origins.is_empty() && origin_allowed(origin, host, &self.origins))
    }

    /// Whether an HTTP API key is configured.
    pub fn api_key_configured(&self) -> bool {
        self.api_key.is_some()
    }

    /// Whether `presented` is the configured API key, compared in constant
    /// time (for equal lengths). False when no key is configured.
    pub fn api_key_matches(&self, presented: Option<&str>) -> bool {
        match (&self.api_key, presented) {
            (Some(key), Some(p)) => constant_time_eq(key.as_bytes(), p.as_bytes()),
            _ => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the comparison from being turned into an early exit.
    std::hint::black_box(diff) == 0
}
