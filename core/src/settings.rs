//! The configuration file, `roomcast.toml`: parsed from text (the driver
//! reads the file), every error one line naming the file, the key and the
//! line.
//!
//! ```toml
//! listen = "0.0.0.0:8080"           # any flag, `-` written `_`
//! ws_ping_interval = "25s"          # durations as strings: 500ms, 25s, 5m
//!
//! token_hmac_secret = "…"           # HS256/384/512
//! token_public_key = "/etc/roomcast/jwt.pem"   # RS256/384/512, ES256, ES384
//! token_audience = "roomcast"       # checked only when set
//! token_issuer = "https://auth.example.com"
//! token_algorithms = ["HS256"]      # optional restriction
//! token_expire_grace = "25s"
//! allow_anonymous_connect_without_token = false
//! allowed_origins = ["https://*.example.com"]
//! api_key = "…"
//!
//! [default_namespace]               # rooms without `ns:`
//! allow_subscribe_for_client = true
//!
//! [[namespace]]
//! name = "chat"                     # rooms `chat:…`
//! allow_subscribe_for_client = true
//! allow_publish_for_subscriber = true
//! history_size = 100
//! history_ttl = "5m"
//! ```
//!
//! # Keys
//!
//! - Every flag of the binaries ([`FLAG_KEYS`], checked against the command
//!   line's definition by a test), typed as the flag: strings, integers,
//!   durations (strings), booleans (`no_chat_page`), and `seed_protocol` as
//!   `"on"`/`"off"` or a boolean. Their ranges are the flags' own: with
//!   feature `cli`, [`Settings::cli_with_file`] runs each value through the
//!   flag's parser and reports a refusal with the file's line. A flag given
//!   on the command line or in the environment wins over the file.
//! - The auth keys ([`AUTH_KEYS`]): [`AuthSettings`].
//! - `[default_namespace]` and `[[namespace]]` (with `name`): the options of
//!   [`NamespaceOptions`] ([`NAMESPACE_KEYS`]), booleans, integers
//!   (`history_size`, `presence_max_members`) and durations (`history_ttl`,
//!   `history_meta_ttl`). `history_size` and `history_ttl` go together;
//!   `force_recovery` needs both.
//!
//! Errors: a TOML syntax error, an unknown key, a wrong type, a bad value
//! (duration, address, algorithm, namespace name, …), a duplicate
//! namespace; with [`Settings::build_auth`], a public key that is not a
//! usable key, or an algorithm without its key; with
//! [`Settings::unreadable_public_key`], a key file the driver could not
//! read. Secrets (`token_hmac_secret`, `api_key`) are never echoed.

use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::auth::{
    Auth, AuthSettings, KeyError, Namespace, NamespaceOptions, Pattern, SUPPORTED_ALGORITHMS,
    valid_namespace_name,
};

/// The file name the binaries look for by default.
pub const DEFAULT_FILE_NAME: &str = "roomcast.toml";

/// A configuration error: one line, `FILE:LINE: KEY: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file's name, as given to [`parse`].
    pub file: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The key (`history_ttl`, `namespace[chat].history_ttl`), when known.
    pub key: Option<String>,
    /// What is wrong (one line).
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One line, printable, bounded.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    while out.contains("  ") {
        out = out.replace("  ", " ");
    }
    out.trim().to_string()
}

/// A value echoed in a message: quoted, bounded.
fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(60).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    format!("{t:?}")
}

/// How a flag's value is typed in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// A string.
    Str,
    /// A socket address, `host:port`.
    Addr,
    /// A non-negative integer.
    Int,
    /// A duration string.
    Duration,
    /// A boolean (a switch flag: true sets it).
    Bool,
    /// `"on"` / `"off"`, or a boolean.
    OnOff,
}

/// The flags a file may set, by key (the flag's name with `_`), and their
/// types. Keep in step with [`crate::cli::Cli`] (a test checks).
pub const FLAG_KEYS: &[(&str, FlagKind)] = &[
    ("listen", FlagKind::Addr),
    ("redis", FlagKind::Str),
    ("channel_prefix", FlagKind::Str),
    ("max_frame_bytes", FlagKind::Int),
    ("max_room_bytes", FlagKind::Int),
    ("max_rooms_per_conn", FlagKind::Int),
    ("max_outbound_bytes", FlagKind::Int),
    ("publish_buffer", FlagKind::Int),
    ("max_broker_payload_bytes", FlagKind::Int),
    ("max_commands_per_sec", FlagKind::Int),
    ("max_connections", FlagKind::Int),
    ("ws_ping_interval", FlagKind::Duration),
    ("ws_pong_timeout", FlagKind::Duration),
    ("client_ping_interval", FlagKind::Duration),
    ("client_pong_timeout", FlagKind::Duration),
    ("client_connect_timeout", FlagKind::Duration),
    ("recovery_max_publications", FlagKind::Int),
    ("history_max_publications", FlagKind::Int),
    ("presence_refresh", FlagKind::Duration),
    ("presence_ttl", FlagKind::Duration),
    ("presence_max_members", FlagKind::Int),
    ("seed_protocol", FlagKind::OnOff),
    ("threads", FlagKind::Int),
    ("handshake_timeout", FlagKind::Duration),
    ("shutdown_grace", FlagKind::Duration),
    ("redis_connect_timeout", FlagKind::Duration),
    ("redis_probe_interval", FlagKind::Duration),
    ("redis_timeout", FlagKind::Duration),
    ("reconnect_min", FlagKind::Duration),
    ("reconnect_max", FlagKind::Duration),
    ("no_chat_page", FlagKind::Bool),
    ("api_listen", FlagKind::Addr),
    ("api_insecure", FlagKind::Bool),
    ("api_max_body", FlagKind::Int),
    ("api_http_errors", FlagKind::Bool),
    ("admin", FlagKind::Bool),
    ("node_announce_interval", FlagKind::Duration),
];

/// The top-level auth keys (see [`AuthSettings`]).
pub const AUTH_KEYS: &[&str] = &[
    "token_hmac_secret",
    "token_public_key",
    "token_audience",
    "token_issuer",
    "token_algorithms",
    "token_expire_grace",
    "allowed_origins",
    "api_key",
    "allow_anonymous_connect_without_token",
];

/// The options of a namespace table (see [`NamespaceOptions`]).
pub const NAMESPACE_KEYS: &[&str] = &[
    "allow_subscribe_for_client",
    "allow_subscribe_for_anonymous",
    "allow_publish_for_client",
    "allow_publish_for_subscriber",
    "allow_publish_for_anonymous",
    "allow_user_limited_channels",
    "allow_history_for_client",
    "allow_history_for_subscriber",
    "allow_history_for_anonymous",
    "allow_presence_for_client",
    "allow_presence_for_subscriber",
    "allow_presence_for_anonymous",
    "history_size",
    "history_ttl",
    "history_meta_ttl",
    "force_recovery",
    "presence",
    "join_leave",
    "presence_max_members",
];

/// A flag's value from the file, checked for its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagValue {
    /// A string (or an address, `"on"`/`"off"`).
    Str(String),
    /// An integer.
    Int(u64),
    /// A duration, with its text.
    Duration(String, Duration),
    /// A switch.
    Bool(bool),
}

/// A flag the file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFlag {
    /// Its key (`max_frame_bytes`); the flag is `--max-frame-bytes`.
    pub key: &'static str,
    /// Its value.
    pub value: FlagValue,
    /// Its line in the file.
    pub line: usize,
}

impl FileFlag {
    /// The flag's name, `--max-frame-bytes`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// The command-line argument that sets this value
    /// (`--max-frame-bytes=1024`), or `None` for a switch set to false.
    pub fn cli_arg(&self) -> Option<String> {
        let flag = self.flag();
        match &self.value {
            FlagValue::Str(s) | FlagValue::Duration(s, _) => Some(format!("{flag}={s}")),
            FlagValue::Int(n) => Some(format!("{flag}={n}")),
            FlagValue::Bool(true) => Some(flag),
            FlagValue::Bool(false) => None,
        }
    }
}

/// A parsed `roomcast.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The file's name (for errors).
    pub file: String,
    /// The flags it sets, in file order.
    pub flags: Vec<FileFlag>,
    /// Its auth keys and namespaces.
    pub auth: AuthSettings,
    lines: Vec<(String, usize)>,
}

impl Settings {
    /// Settings without a file: open mode, no flag set.
    pub fn empty(file: &str) -> Settings {
        Settings {
            file: file.to_string(),
            flags: Vec::new(),
            auth: AuthSettings::default(),
            lines: Vec::new(),
        }
    }

    /// The line a top-level key is on.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.lines.iter().find(|(k, _)| k == key).map(|(_, l)| *l)
    }

    /// An error about `key`, at its line.
    pub fn error(&self, key: &str, message: impl AsRef<str>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line_of(key),
            key: Some(key.to_string()),
            message: one_line(message.as_ref()),
        }
    }

    /// The error for a `token_public_key` file the driver could not read.
    pub fn unreadable_public_key(&self, err: &dyn std::fmt::Display) -> ConfigError {
        let path = self.auth.token_public_key.as_deref().unwrap_or("");
        self.error(
            "token_public_key",
            format!("cannot read {}: {err}", shown(path)),
        )
    }

    /// The [`Auth`] these settings describe. `public_key_pem`: the contents
    /// of the `token_public_key` file (read by the driver).
    pub fn build_auth(&self, public_key_pem: Option<&[u8]>) -> Result<Auth, ConfigError> {
        Auth::new(&self.auth, public_key_pem).map_err(|e| {
            let key = match &e {
                KeyError::EmptySecret => "token_hmac_secret",
                KeyError::BadPublicKey(_) | KeyError::NoKey => "token_public_key",
                KeyError::UnknownAlgorithm(_) | KeyError::NoKeyFor { .. } => "token_algorithms",
                KeyError::Empty(k) => k,
            };
            let msg = match (&e, &self.auth.token_public_key) {
                (KeyError::BadPublicKey(m), Some(path)) => format!("{}: {m}", shown(path)),
                _ => e.to_string(),
            };
            self.error(key, msg)
        })
    }
}

/// Why [`Settings::cli_with_file`] failed.
#[cfg(feature = "cli")]
#[derive(Debug)]
pub enum CliFileError {
    /// The command line itself (print it as clap does: `e.exit()`).
    Args(clap::Error),
    /// A value of the file.
    File(ConfigError),
}

#[cfg(feature = "cli")]
impl Settings {
    /// The command line `args` (program name first) with this file's flags
    /// beneath it: a flag given on the command line or by its environment
    /// variable wins; the file's value else; the default last. Each file
    /// value goes through its flag's own parser, so a value the flag would
    /// refuse is a [`ConfigError`] at its line.
    pub fn cli_with_file<I, T>(&self, args: I) -> Result<crate::cli::Cli, CliFileError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};

        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let command = crate::cli::Cli::command();
        let given = command
            .clone()
            .try_get_matches_from(&args)
            .map_err(CliFileError::Args)?;
        let mut merged: Vec<std::ffi::OsString> =
            vec![args.first().cloned().unwrap_or_else(|| "roomcast".into())];
        for flag in &self.flags {
            let known = command.get_arguments().any(|a| a.get_id() == flag.key);
            let at = |message: String| ConfigError {
                file: self.file.clone(),
                line: Some(flag.line),
                key: Some(flag.key.to_string()),
                message: one_line(&message),
            };
            if !known {
                return Err(CliFileError::File(at("not a flag of this build".into())));
            }
            if matches!(
                given.value_source(flag.key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            if let ("redis", FlagValue::Str(url)) = (flag.key, &flag.value) {
                // Its own message: redacted, unlike clap's echo of the value.
                crate::cli::parse_redis_url(url).map_err(|e| CliFileError::File(at(e)))?;
            }
            let Some(arg) = flag.cli_arg() else { continue };
            if let Err(e) = command
                .clone()
                .try_get_matches_from([std::ffi::OsString::from("roomcast"), arg.clone().into()])
            {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid value");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                return Err(CliFileError::File(at(first.to_string())));
            }
            merged.push(arg.into());
        }
        merged.extend(args.into_iter().skip(1));
        let matches = command
            .try_get_matches_from(merged)
            .map_err(CliFileError::Args)?;
        crate::cli::Cli::from_arg_matches(&matches).map_err(CliFileError::Args)
    }
}

/// The 1-based line of byte offset `pos`.
fn line_at(text: &str, pos: usize) -> usize {
    let end = pos.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'t> {
    file: &'t str,
    text: &'t str,
}

impl Ctx<'_> {
    fn err(&self, pos: usize, key: &str, message: impl AsRef<str>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: Some(line_at(self.text, pos)),
            key: Some(key.to_string()),
            message: one_line(message.as_ref()),
        }
    }

    fn wrong_type(&self, v: &Spanned<DeValue<'_>>, key: &str, expected: &str) -> ConfigError {
        self.err(
            v.span().start,
            key,
            format!("expected {expected}, found {}", v.get_ref().type_str()),
        )
    }

    fn string(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<String, ConfigError> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.wrong_type(v, key, "a string")),
        }
    }

    fn nonempty(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<String, ConfigError> {
        let s = self.string(v, key)?;
        if s.is_empty() {
            return Err(self.err(v.span().start, key, "must not be empty"));
        }
        Ok(s)
    }

    fn boolean(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<bool, ConfigError> {
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.wrong_type(v, key, "true or false")),
        }
    }

    fn integer(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<u64, ConfigError> {
        match v.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if n < 0 => Err(self.err(v.span().start, key, "must not be negative")),
                Ok(n) => u64::try_from(n).map_err(|_| self.err(v.span().start, key, "too large")),
                Err(_) => Err(self.err(v.span().start, key, "not an integer")),
            },
            _ => Err(self.wrong_type(v, key, "an integer")),
        }
    }

    fn usize(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<usize, ConfigError> {
        let n = self.integer(v, key)?;
        usize::try_from(n).map_err(|_| self.err(v.span().start, key, "too large"))
    }

    fn duration(
        &self,
        v: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Result<(String, Duration), ConfigError> {
        match v.get_ref() {
            DeValue::String(s) => parse_duration(s)
                .map(|d| (s.to_string(), d))
                .map_err(|e| self.err(v.span().start, key, e)),
            _ => Err(self.wrong_type(v, key, "a duration string such as \"25s\"")),
        }
    }

    fn table<'a, 'i>(
        &self,
        v: &'a Spanned<DeValue<'i>>,
        key: &str,
        expected: &str,
    ) -> Result<&'a DeTable<'i>, ConfigError> {
        match v.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.wrong_type(v, key, expected)),
        }
    }
}

/// A table's entries in file order.
fn entries<'a, 'i>(
    t: &'a DeTable<'i>,
) -> Vec<(
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

/// Parses `roomcast.toml`'s text. `file`: its name, for errors.
pub fn parse(file: &str, text: &str) -> Result<Settings, ConfigError> {
    let cx = Ctx { file, text };
    let doc = DeTable::parse(text).map_err(|e| syntax_error(&cx, &e))?;
    let mut settings = Settings::empty(file);
    let auth = &mut settings.auth;
    for (k, v) in entries(doc.get_ref()) {
        let key: &str = k.get_ref();
        let pos = k.span().start;
        settings.lines.push((key.to_string(), line_at(text, pos)));
        match key {
            "token_hmac_secret" => auth.token_hmac_secret = Some(cx.nonempty(v, key)?),
            "token_public_key" => auth.token_public_key = Some(cx.nonempty(v, key)?),
            "token_audience" => auth.token_audience = Some(cx.nonempty(v, key)?),
            "token_issuer" => auth.token_issuer = Some(cx.nonempty(v, key)?),
            "token_algorithms" => {
                let DeValue::Array(items) = v.get_ref() else {
                    return Err(cx.wrong_type(v, key, "an array of algorithm names"));
                };
                let mut algs = Vec::new();
                for item in items.iter() {
                    let name = cx.string(item, key)?;
                    if !SUPPORTED_ALGORITHMS.contains(&name.as_str()) {
                        return Err(cx.err(
                            item.span().start,
                            key,
                            KeyError::UnknownAlgorithm(name.chars().take(40).collect()).to_string(),
                        ));
                    }
                    algs.push(name);
                }
                if algs.is_empty() {
                    return Err(cx.err(v.span().start, key, "must not be empty"));
                }
                auth.token_algorithms = Some(algs);
            }
            "token_expire_grace" => auth.token_expire_grace = cx.duration(v, key)?.1,
            "allowed_origins" => {
                let DeValue::Array(items) = v.get_ref() else {
                    return Err(cx.wrong_type(v, key, "an array of origin patterns"));
                };
                let mut patterns = Vec::new();
                for item in items.iter() {
                    patterns.push(Pattern::new(&cx.nonempty(item, key)?));
                }
                auth.allowed_origins = patterns;
            }
            "api_key" => auth.api_key = Some(cx.nonempty(v, key)?),
            "allow_anonymous_connect_without_token" => {
                auth.allow_anonymous_connect_without_token = cx.boolean(v, key)?
            }
            "default_namespace" => {
                let t = cx.table(v, key, "a table ([default_namespace])")?;
                auth.default_namespace = Some(namespace_options(&cx, t, key, None)?);
            }
            "namespace" => {
                let DeValue::Array(items) = v.get_ref() else {
                    return Err(cx.wrong_type(v, key, "an array of tables ([[namespace]])"));
                };
                for (i, item) in items.iter().enumerate() {
                    let label = format!("namespace[#{}]", i + 1);
                    let t = cx.table(item, &label, "a table ([[namespace]])")?;
                    let Some(name_v) = t.get("name") else {
                        return Err(cx.err(item.span().start, &label, "missing name"));
                    };
                    let name = cx.string(name_v, &format!("{label}.name"))?;
                    if !valid_namespace_name(&name) {
                        return Err(cx.err(
                            name_v.span().start,
                            &format!("{label}.name"),
                            format!(
                                "invalid namespace name {}: use 2 or more of a-z A-Z 0-9 - _",
                                shown(&name)
                            ),
                        ));
                    }
                    if auth.namespaces.iter().any(|n| n.name == name) {
                        return Err(cx.err(
                            name_v.span().start,
                            &format!("{label}.name"),
                            format!("namespace {} is defined twice", shown(&name)),
                        ));
                    }
                    let label = format!("namespace[{name}]");
                    let options = namespace_options(&cx, t, &label, Some("name"))?;
                    auth.namespaces.push(Namespace { name, options });
                }
            }
            _ => {
                let Some((flag_key, kind)) = FLAG_KEYS.iter().find(|(f, _)| *f == key) else {
                    return Err(cx.err(pos, key, format!("unknown key {}", shown(key))));
                };
                let value = match kind {
                    FlagKind::Str => FlagValue::Str(cx.string(v, key)?),
                    FlagKind::Addr => {
                        let s = cx.string(v, key)?;
                        if s.parse::<core::net::SocketAddr>().is_err() {
                            return Err(cx.err(
                                v.span().start,
                                key,
                                format!(
                                    "invalid address {}: expected host:port such as 127.0.0.1:8080",
                                    shown(&s)
                                ),
                            ));
                        }
                        FlagValue::Str(s)
                    }
                    FlagKind::Int => FlagValue::Int(cx.integer(v, key)?),
                    FlagKind::Duration => {
                        let (s, d) = cx.duration(v, key)?;
                        FlagValue::Duration(s, d)
                    }
                    FlagKind::Bool => FlagValue::Bool(cx.boolean(v, key)?),
                    FlagKind::OnOff => match v.get_ref() {
                        DeValue::Boolean(b) => FlagValue::Str(if *b { "on" } else { "off" }.into()),
                        DeValue::String(s) if s == "on" || s == "off" => {
                            FlagValue::Str(s.to_string())
                        }
                        DeValue::String(s) => {
                            return Err(cx.err(
                                v.span().start,
                                key,
                                format!("expected \"on\" or \"off\", found {}", shown(s)),
                            ));
                        }
                        _ => return Err(cx.wrong_type(v, key, "\"on\" or \"off\"")),
                    },
                };
                settings.flags.push(FileFlag {
                    key: flag_key,
                    value,
                    line: line_at(text, pos),
                });
            }
        }
    }
    Ok(settings)
}

fn namespace_options(
    cx: &Ctx<'_>,
    t: &DeTable<'_>,
    label: &str,
    skip: Option<&str>,
) -> Result<NamespaceOptions, ConfigError> {
    let mut o = NamespaceOptions::default();
    let mut history_size_at = None;
    let mut history_ttl_at = None;
    let mut force_recovery_at = None;
    for (k, v) in entries(t) {
        let key: &str = k.get_ref();
        if Some(key) == skip {
            continue;
        }
        let full = format!("{label}.{key}");
        let b = |v| cx.boolean(v, &full);
        match key {
            "allow_subscribe_for_client" => o.allow_subscribe_for_client = b(v)?,
            "allow_subscribe_for_anonymous" => o.allow_subscribe_for_anonymous = b(v)?,
            "allow_publish_for_client" => o.allow_publish_for_client = b(v)?,
            "allow_publish_for_subscriber" => o.allow_publish_for_subscriber = b(v)?,
            "allow_publish_for_anonymous" => o.allow_publish_for_anonymous = b(v)?,
            "allow_user_limited_channels" => o.allow_user_limited_channels = b(v)?,
            "allow_history_for_client" => o.allow_history_for_client = b(v)?,
            "allow_history_for_subscriber" => o.allow_history_for_subscriber = b(v)?,
            "allow_history_for_anonymous" => o.allow_history_for_anonymous = b(v)?,
            "allow_presence_for_client" => o.allow_presence_for_client = b(v)?,
            "allow_presence_for_subscriber" => o.allow_presence_for_subscriber = b(v)?,
            "allow_presence_for_anonymous" => o.allow_presence_for_anonymous = b(v)?,
            "force_recovery" => {
                o.force_recovery = b(v)?;
                force_recovery_at = Some(k.span().start);
            }
            "presence" => o.presence = b(v)?,
            "join_leave" => o.join_leave = b(v)?,
            "history_size" => {
                o.history_size = cx.usize(v, &full)?;
                history_size_at = Some(k.span().start);
            }
            "presence_max_members" => o.presence_max_members = cx.usize(v, &full)?,
            "history_ttl" => {
                o.history_ttl = cx.duration(v, &full)?.1;
                history_ttl_at = Some(k.span().start);
            }
            "history_meta_ttl" => o.history_meta_ttl = cx.duration(v, &full)?.1,
            _ => {
                return Err(cx.err(
                    k.span().start,
                    &full,
                    format!("unknown namespace option {}", shown(key)),
                ));
            }
        }
    }
    let has_size = o.history_size > 0;
    let has_ttl = !o.history_ttl.is_zero();
    if has_size != has_ttl {
        let (at, key, other) = if has_size {
            (history_size_at, "history_size", "history_ttl")
        } else {
            (history_ttl_at, "history_ttl", "history_size")
        };
        return Err(cx.err(
            at.unwrap_or(0),
            &format!("{label}.{key}"),
            format!("needs {other} too (history keeps both a size and a time limit)"),
        ));
    }
    if o.force_recovery && !has_size {
        return Err(cx.err(
            force_recovery_at.unwrap_or(0),
            &format!("{label}.force_recovery"),
            "needs history (history_size and history_ttl)",
        ));
    }
    Ok(o)
}

fn syntax_error(cx: &Ctx<'_>, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_at(cx.text, s.start));
    // Name the key when the line is `key = …`.
    let key = line.and_then(|l| {
        let text = cx.text.lines().nth(l - 1)?;
        let (k, _) = text.split_once('=')?;
        let k = k.trim();
        let bare = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        bare.then(|| k.to_string())
    });
    ConfigError {
        file: cx.file.to_string(),
        line,
        key,
        message: format!("invalid TOML: {}", one_line(e.message())),
    }
}

/// Parses `250ms`, `10s`, `2m`, or a bare number of seconds: the grammar of
/// the duration flags.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| {
        format!(
            "invalid duration {}: expected e.g. 500ms, 10s, 2m",
            shown(s)
        )
    })?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {}: use ms, s or m",
                shown(s)
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {}", shown(s)))
}
