//! Who may subscribe to, publish in, and read the history or presence of a
//! room: namespaces and their permission flags, as Centrifugo defines them
//! (`channel_permissions.md`; `internal/client/handler.go` and
//! `internal/config/container.go` of Centrifugo v6 for the exact order).
//!
//! # Room names
//!
//! - **Private prefix `$`**: a room whose name starts with `$` needs a
//!   subscription token. As in Centrifugo the `$` is the first character of
//!   the *whole* name, before any namespace: `$chat:secret` is private and in
//!   namespace `chat`; `chat:$secret` is not private (`$` has no meaning
//!   after the namespace separator).
//! - **Namespace**: the part before the first `:` (after a leading `$`).
//!   Rooms without `:` use the default namespace. A name that is not
//!   configured, or an empty one (`:room`), is 102 "unknown channel"
//!   (Centrifugo maps an empty name to the default namespace; roomcast
//!   refuses it).
//! - **User-limited `#`**: in a namespace with
//!   `allow_user_limited_channels`, a room containing `#` may be joined only
//!   by the users listed after its *last* `#`, comma-separated
//!   (`dialog#42,43`: users 42 and 43; never anonymous). In other namespaces
//!   `#` is an ordinary character.
//!
//! # Subscribe, in Centrifugo's order (the first match decides)
//!
//! 1. The namespace must exist (else 102).
//! 2. A `$` room without a subscription token: 103.
//! 3. A valid subscription token decides alone: its `channel` must be the
//!    room and its `sub` the connection's user, else the connection is closed
//!    3500 "invalid token" (Centrifugo's answer to a mismatch).
//! 4. A user-limited room: allowed to the listed users, 103 to others.
//! 5. `allow_subscribe_for_client` lets in every user with an id, and
//!    anonymous ones too only if `allow_subscribe_for_anonymous` is also set
//!    (as in Centrifugo, the anonymous flag alone grants nothing).
//! 6. Otherwise 103.
//!
//! # Publish, history, presence
//!
//! `allow_publish_for_client` (users with an id; anonymous ones too with
//! `allow_publish_for_anonymous`), or `allow_publish_for_subscriber` for a
//! connection subscribed to the room (again anonymous ones only with
//! `allow_publish_for_anonymous`). History and presence follow the same
//! pattern with their `_client` / `_subscriber` / `_anonymous` flags.
//!
//! # Open mode
//!
//! With no token key and no namespace configured ([`Policy::open`]) every
//! connection is anonymous and may join, publish, read history and presence
//! everywhere, `$`, `#` and `ns:` rooms included. Once a namespace is
//! configured (or any token key), everything not granted is denied.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::Value;

use super::User;
use super::jwt::SubClaims;
use crate::codec::centrifugo::{Disconnect, ErrorCode};

/// The options of one namespace (or of the rooms without one). The default
/// grants nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceOptions {
    /// Users with an id may subscribe.
    pub allow_subscribe_for_client: bool,
    /// With `allow_subscribe_for_client`: anonymous connections may too.
    pub allow_subscribe_for_anonymous: bool,
    /// Users with an id may publish.
    pub allow_publish_for_client: bool,
    /// Subscribers of the room may publish in it.
    pub allow_publish_for_subscriber: bool,
    /// With one of the two above: anonymous connections may publish too.
    pub allow_publish_for_anonymous: bool,
    /// Rooms containing `#` are limited to the users listed after the last `#`.
    pub allow_user_limited_channels: bool,
    /// Users with an id may read history.
    pub allow_history_for_client: bool,
    /// Subscribers may read history.
    pub allow_history_for_subscriber: bool,
    /// With one of the two above: anonymous connections may too.
    pub allow_history_for_anonymous: bool,
    /// Users with an id may read presence.
    pub allow_presence_for_client: bool,
    /// Subscribers may read presence.
    pub allow_presence_for_subscriber: bool,
    /// With one of the two above: anonymous connections may too.
    pub allow_presence_for_anonymous: bool,
    /// Publications kept per room (0: no history).
    pub history_size: usize,
    /// How long a room's history is kept (zero: no history).
    pub history_ttl: Duration,
    /// How long a room's stream metadata (offset, epoch) is kept (zero:
    /// the broker's default).
    pub history_meta_ttl: Duration,
    /// Subscriptions recover missed publications even if the client did not ask.
    pub force_recovery: bool,
    /// Track who is in each room.
    pub presence: bool,
    /// Send join/leave pushes.
    pub join_leave: bool,
    /// Most members a room's presence may hold (0: no limit).
    pub presence_max_members: usize,
}

impl NamespaceOptions {
    /// Everything allowed (open mode).
    pub fn allow_all() -> NamespaceOptions {
        NamespaceOptions {
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            allow_publish_for_client: true,
            allow_publish_for_subscriber: true,
            allow_publish_for_anonymous: true,
            allow_user_limited_channels: false,
            allow_history_for_client: true,
            allow_history_for_subscriber: true,
            allow_history_for_anonymous: true,
            allow_presence_for_client: true,
            allow_presence_for_subscriber: true,
            allow_presence_for_anonymous: true,
            ..NamespaceOptions::default()
        }
    }
}

impl NamespaceOptions {
    /// Open mode's rooms: everything allowed, with a short history that
    /// reconnecting clients recover from, and presence with join/leave, so
    /// the chat page works with no setup.
    pub fn open() -> NamespaceOptions {
        NamespaceOptions {
            history_size: OPEN_HISTORY_SIZE,
            history_ttl: OPEN_HISTORY_TTL,
            force_recovery: true,
            presence: true,
            join_leave: true,
            ..NamespaceOptions::allow_all()
        }
    }
}

/// Open mode's history per room.
pub const OPEN_HISTORY_SIZE: usize = 100;
/// How long open mode keeps a room's history.
pub const OPEN_HISTORY_TTL: Duration = Duration::from_secs(300);

/// A configured namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Its name (`[-a-zA-Z0-9_]{2,}`, as Centrifugo).
    pub name: String,
    /// Its options.
    pub options: NamespaceOptions,
}

/// Whether `name` is a valid namespace name: `^[-a-zA-Z0-9_]{2,}$`.
pub fn valid_namespace_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A refusal, and how each protocol answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The room's namespace is not configured: error 102 "unknown channel".
    UnknownChannel,
    /// Not allowed: error 103 "permission denied". The reason is for logs.
    PermissionDenied(Cow<'static, str>),
    /// The subscription token expired: error 109 "token expired".
    TokenExpired,
    /// A subscription token for another room or user: close 3500 "invalid
    /// token" (Centrifugo's answer). The reason is for logs.
    InvalidToken(Cow<'static, str>),
}

/// How the Centrifugo protocol answers a [`Denial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An error reply to the command.
    Error(ErrorCode),
    /// Close the connection.
    Close(Disconnect),
}

impl Denial {
    /// The Centrifugo protocol's answer: 102, 103 or 109 as an error reply,
    /// or a close 3500.
    pub fn centrifugo(&self) -> Answer {
        match self {
            Denial::UnknownChannel => Answer::Error(ErrorCode::UNKNOWN_CHANNEL),
            Denial::PermissionDenied(_) => Answer::Error(ErrorCode::PERMISSION_DENIED),
            Denial::TokenExpired => Answer::Error(ErrorCode::TOKEN_EXPIRED),
            Denial::InvalidToken(_) => Answer::Close(Disconnect::INVALID_TOKEN),
        }
    }

    /// The seed protocol's answer to any denial: close 1008 "permission
    /// denied".
    pub fn seed_close(&self) -> (u16, &'static str) {
        SEED_DENIED
    }

    /// Why, for logs.
    pub fn reason(&self) -> &str {
        match self {
            Denial::UnknownChannel => "unknown namespace",
            Denial::PermissionDenied(r) | Denial::InvalidToken(r) => r,
            Denial::TokenExpired => "subscription token expired",
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::UnknownChannel => f.write_str("unknown channel"),
            Denial::PermissionDenied(r) => write!(f, "permission denied: {r}"),
            Denial::TokenExpired => f.write_str("token expired"),
            Denial::InvalidToken(r) => write!(f, "invalid token: {r}"),
        }
    }
}

/// The seed protocol's close for a room a connection may not use.
pub const SEED_DENIED: (u16, &str) = (1008, "permission denied");

/// Why a subscription was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    /// Open mode: everything is allowed.
    Open,
    /// A valid subscription token.
    SubscriptionToken,
    /// The connection token's `channels` (server-side subscription).
    ConnectionToken,
    /// The user is listed in a user-limited (`#`) room.
    UserLimited,
    /// The namespace's `allow_subscribe_for_*` flags.
    Namespace,
}

/// A granted subscription: the room's namespace options (history,
/// presence, recovery for later issues) and what the token added.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeGrant {
    /// The namespace (`None`: the default namespace, or open mode).
    pub namespace: Option<String>,
    /// Its options.
    pub options: NamespaceOptions,
    /// Why it was granted.
    pub source: GrantSource,
    /// The subscription token's `info` (`chan_info`).
    pub chan_info: Option<Value>,
    /// The subscription token's `exp`: the subscription expires then.
    pub expires_at: Option<u64>,
}

/// What a room name says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomName<'a> {
    /// Starts with `$`: needs a subscription token.
    pub private: bool,
    /// The namespace (`None`: no `:`, the default namespace). May be empty
    /// (`:room`), which no configuration holds.
    pub namespace: Option<&'a str>,
}

impl<'a> RoomName<'a> {
    /// Splits a room name (see the module doc).
    pub fn parse(room: &'a str) -> RoomName<'a> {
        let private = room.starts_with('$');
        let rest = room.strip_prefix('$').unwrap_or(room);
        RoomName {
            private,
            namespace: rest.split_once(':').map(|(ns, _)| ns),
        }
    }
}

/// Whether `room` names `user` after its last `#`: `dialog#42,43` lists
/// users 42 and 43. Anonymous users are never listed.
pub fn user_listed(room: &str, user: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    match room.rsplit_once('#') {
        Some((_, list)) => list.split(',').any(|u| u == user),
        None => false,
    }
}

/// The permission rules: the default namespace, the configured ones, or
/// open mode. Pure and `Sync`: build it once, share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    open: bool,
    default: NamespaceOptions,
    namespaces: Vec<Namespace>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::open()
    }
}

impl Policy {
    /// Open mode: everyone may do everything everywhere.
    pub fn open() -> Policy {
        Policy {
            open: true,
            default: NamespaceOptions::open(),
            namespaces: Vec::new(),
        }
    }

    /// Default deny: `default` for rooms without a namespace, `namespaces`
    /// for the others (names are assumed valid and distinct; the config
    /// parser checks them).
    pub fn new(default: NamespaceOptions, namespaces: Vec<Namespace>) -> Policy {
        Policy {
            open: false,
            default,
            namespaces,
        }
    }

    /// Whether this is open mode.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The namespaces configured (empty in open mode).
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// The options of `room`'s namespace, with its name; 102 if unknown.
    pub fn resolve<'r>(
        &self,
        room: &'r str,
    ) -> Result<(Option<&'r str>, NamespaceOptions), Denial> {
        if room.is_empty() {
            return Err(Denial::UnknownChannel);
        }
        let name = RoomName::parse(room);
        if self.open {
            return Ok((name.namespace, self.default));
        }
        match name.namespace {
            None => Ok((None, self.default)),
            Some(ns) => self
                .namespaces
                .iter()
                .find(|n| n.name == ns)
                .map(|n| (Some(ns), n.options))
                .ok_or(Denial::UnknownChannel),
        }
    }

    /// May `user` subscribe to `room`? `sub_token`: the claims of the
    /// subscription token the client sent, already verified (see
    /// [`TokenVerifier::verify_subscribe`](super::TokenVerifier::verify_subscribe);
    /// an expired one is [`Denial::TokenExpired`] before this is asked, an
    /// invalid one [`Denial::PermissionDenied`] — or use
    /// [`Auth::subscribe`](super::Auth::subscribe), which does both).
    pub fn decide_subscribe(
        &self,
        user: &User,
        room: &str,
        sub_token: Option<&SubClaims>,
    ) -> Result<SubscribeGrant, Denial> {
        let (namespace, options) = self.resolve(room)?;
        let grant = |source, token: Option<&SubClaims>| SubscribeGrant {
            namespace: namespace.map(str::to_string),
            options,
            source,
            chan_info: token.and_then(|t| t.info.clone()),
            expires_at: token.and_then(|t| t.expires_at),
        };
        if self.open {
            return Ok(grant(GrantSource::Open, sub_token));
        }
        let private = RoomName::parse(room).private;
        if private && sub_token.is_none() {
            return Err(denied("private room needs a subscription token"));
        }
        if let Some(token) = sub_token {
            if token.channel != room {
                return Err(Denial::InvalidToken("token channel mismatch".into()));
            }
            if token.user != user.id {
                return Err(Denial::InvalidToken("token user mismatch".into()));
            }
            return Ok(grant(GrantSource::SubscriptionToken, Some(token)));
        }
        let user_limited = options.allow_user_limited_channels && room.contains('#');
        if user_limited {
            return if user_listed(room, &user.id) {
                Ok(grant(GrantSource::UserLimited, None))
            } else {
                Err(denied("user not listed in this room"))
            };
        }
        if options.allow_subscribe_for_client
            && (!user.is_anonymous() || options.allow_subscribe_for_anonymous)
        {
            return Ok(grant(GrantSource::Namespace, None));
        }
        Err(denied("subscribe not allowed in this namespace"))
    }

    /// A room from the connection token's `channels` claim (a server-side
    /// subscription the token grants): only its namespace must exist.
    pub fn decide_token_channel(&self, room: &str) -> Result<SubscribeGrant, Denial> {
        let (namespace, options) = self.resolve(room)?;
        Ok(SubscribeGrant {
            namespace: namespace.map(str::to_string),
            options,
            source: if self.open {
                GrantSource::Open
            } else {
                GrantSource::ConnectionToken
            },
            chan_info: None,
            expires_at: None,
        })
    }

    /// May `user` publish in `room`? `is_subscriber`: whether this
    /// connection is subscribed to it.
    pub fn decide_publish(
        &self,
        user: &User,
        room: &str,
        is_subscriber: bool,
    ) -> Result<(), Denial> {
        let (_, o) = self.resolve(room)?;
        self.decide_flags(
            user,
            is_subscriber,
            o.allow_publish_for_client,
            o.allow_publish_for_subscriber,
            o.allow_publish_for_anonymous,
            "publish",
        )
    }

    /// May `user` read `room`'s history?
    pub fn decide_history(
        &self,
        user: &User,
        room: &str,
        is_subscriber: bool,
    ) -> Result<(), Denial> {
        let (_, o) = self.resolve(room)?;
        self.decide_flags(
            user,
            is_subscriber,
            o.allow_history_for_client,
            o.allow_history_for_subscriber,
            o.allow_history_for_anonymous,
            "history",
        )
    }

    /// May `user` read `room`'s presence?
    pub fn decide_presence(
        &self,
        user: &User,
        room: &str,
        is_subscriber: bool,
    ) -> Result<(), Denial> {
        let (_, o) = self.resolve(room)?;
        self.decide_flags(
            user,
            is_subscriber,
            o.allow_presence_for_client,
            o.allow_presence_for_subscriber,
            o.allow_presence_for_anonymous,
            "presence",
        )
    }

    fn decide_flags(
        &self,
        user: &User,
        is_subscriber: bool,
        for_client: bool,
        for_subscriber: bool,
        for_anonymous: bool,
        what: &'static str,
    ) -> Result<(), Denial> {
        if self.open {
            return Ok(());
        }
        let who_ok = !user.is_anonymous() || for_anonymous;
        if (for_client || (for_subscriber && is_subscriber)) && who_ok {
            return Ok(());
        }
        Err(denied(match what {
            "publish" => "publish not allowed in this namespace",
            "history" => "history not allowed in this namespace",
            _ => "presence not allowed in this namespace",
        }))
    }
}

fn denied(reason: &'static str) -> Denial {
    Denial::PermissionDenied(Cow::Borrowed(reason))
}
