//! The command line shared by both binaries (feature `cli`). Every flag can
//! also be set by an environment variable `ROOMCAST_<FLAG>`.

// `core::net`: the address type only; nothing here opens a socket.
use core::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::config::{ClientTimers, HubConfig, Limits, NodeConfig};
use crate::hub::BrokerMode;

/// roomcast: WebSocket rooms over Redis Pub/Sub, wire-compatible with the
/// tutorial server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "roomcast",
    version,
    about = "WebSocket rooms over Redis Pub/Sub, wire-compatible with the tutorial server"
)]
pub struct Cli {
    /// Address to listen on (WebSocket at any path, plus /healthz, /metrics and /).
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis URL (redis://host:port[/db] or unix:///path). Without it an
    /// embedded single-node broker is used.
    #[arg(long, env = "ROOMCAST_REDIS", value_parser = parse_redis_url)]
    pub redis: Option<String>,

    /// Prefix of every Redis channel name (channel = prefix + room).
    #[arg(long, env = "ROOMCAST_CHANNEL_PREFIX", default_value = "")]
    pub channel_prefix: String,

    /// Largest client frame in bytes; larger closes with 1009.
    #[arg(long, env = "ROOMCAST_MAX_FRAME_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(64..=16 * 1024 * 1024))]
    pub max_frame_bytes: u64,

    /// Longest room name in bytes.
    #[arg(long, env = "ROOMCAST_MAX_ROOM_BYTES", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_room_bytes: u64,

    /// Most rooms one connection may join.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_PER_CONN", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_rooms_per_conn: u64,

    /// Bytes queued for one connection before it is closed as a slow consumer.
    #[arg(long, env = "ROOMCAST_MAX_OUTBOUND_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_outbound_bytes: u64,

    /// Messages held while Redis is unreachable (or queued for a slow link); more are dropped and counted.
    #[arg(long, env = "ROOMCAST_PUBLISH_BUFFER", default_value_t = 10_000)]
    pub publish_buffer: usize,

    /// Largest payload taken from Redis; larger ones are dropped and counted.
    /// Default: --max-outbound-bytes.
    #[arg(long, env = "ROOMCAST_MAX_BROKER_PAYLOAD_BYTES", value_parser = clap::value_parser!(u64).range(64..))]
    pub max_broker_payload_bytes: Option<u64>,

    /// Commands one connection may send per second, both protocols (0: no limit).
    #[arg(long, env = "ROOMCAST_MAX_COMMANDS_PER_SEC", default_value_t = 0)]
    pub max_commands_per_sec: u32,

    /// Most simultaneous connections (WebSocket and HTTP); more are refused.
    /// Default: the open-files limit (RLIMIT_NOFILE) less a reserve of 64
    /// for Redis links, the listener and operators.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Seed protocol: a WebSocket ping after this much silence (0 disables).
    #[arg(long, env = "ROOMCAST_WS_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// Seed protocol: a peer that answers no ping within this is closed 1008 "no pong".
    #[arg(long, env = "ROOMCAST_WS_PONG_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_pong_timeout: Duration,

    /// Centrifugo protocol: interval of the server's pings (0: no pings).
    #[arg(long, env = "ROOMCAST_CLIENT_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub client_ping_interval: Duration,

    /// Centrifugo protocol: a client that answers no ping within this is closed 3012 "no pong".
    #[arg(long, env = "ROOMCAST_CLIENT_PONG_TIMEOUT", default_value = "8s", value_parser = parse_duration)]
    pub client_pong_timeout: Duration,

    /// Centrifugo protocol: no connect command within this closes 3502 "stale".
    #[arg(long, env = "ROOMCAST_CLIENT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub client_connect_timeout: Duration,

    /// The most publications a subscribe recovers; more missed answers `recovered: false`.
    #[arg(
        long,
        env = "ROOMCAST_RECOVERY_MAX_PUBLICATIONS",
        default_value_t = 300
    )]
    pub recovery_max_publications: u64,

    /// The most publications one history request returns.
    #[arg(long, env = "ROOMCAST_HISTORY_MAX_PUBLICATIONS", default_value_t = 300)]
    pub history_max_publications: usize,

    /// Presence: how often a node re-adds its own clients to each room's presence in Redis.
    #[arg(long, env = "ROOMCAST_PRESENCE_REFRESH", default_value = "25s", value_parser = parse_duration)]
    pub presence_refresh: Duration,

    /// Presence: an entry not refreshed this long is gone (a crashed node's clients).
    #[arg(long, env = "ROOMCAST_PRESENCE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub presence_ttl: Duration,

    /// Presence rooms with more clients stop join/leave pushes (a namespace's presence_max_members wins; 0: no cap).
    #[arg(long, env = "ROOMCAST_PRESENCE_MAX_MEMBERS", default_value_t = 1000)]
    pub presence_max_members: usize,

    /// Serve the seed (tutorial) protocol on every path but /connection/websocket.
    #[arg(long, env = "ROOMCAST_SEED_PROTOCOL", default_value = "on", value_parser = ["on", "off"])]
    pub seed_protocol: String,

    /// Worker threads (default: one per core).
    #[arg(long, env = "ROOMCAST_THREADS")]
    pub threads: Option<usize>,

    /// Time a new connection has to complete its HTTP/WebSocket handshake (e.g. 10s, 500ms).
    #[arg(long, env = "ROOMCAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to wait for clients to finish their close handshakes.
    #[arg(long, env = "ROOMCAST_SHUTDOWN_GRACE", default_value = "2s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Timeout for connecting to Redis.
    #[arg(long, env = "ROOMCAST_REDIS_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub redis_connect_timeout: Duration,

    /// Interval between Redis liveness probes: a publish on the node's own channel that must
    /// come back within --redis-timeout, or the link is dead (reconnect, then heal the rooms
    /// that keep history). Also `--redis-ping-interval`.
    #[arg(long, alias = "redis-ping-interval", env = "ROOMCAST_REDIS_PROBE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub redis_probe_interval: Duration,

    /// A Redis command, publish or probe unanswered this long means the link is lost.
    #[arg(long, env = "ROOMCAST_REDIS_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// First reconnect delay (doubles per failure, with jitter).
    #[arg(long, env = "ROOMCAST_RECONNECT_MIN", default_value = "100ms", value_parser = parse_duration)]
    pub reconnect_min: Duration,

    /// Longest reconnect delay.
    #[arg(long, env = "ROOMCAST_RECONNECT_MAX", default_value = "5s", value_parser = parse_duration)]
    pub reconnect_max: Duration,

    /// Do not serve the chat page at GET /.
    #[arg(long, env = "ROOMCAST_NO_CHAT_PAGE")]
    pub no_chat_page: bool,

    /// A roomcast.toml: every scalar flag (as `flag_name = …`), the token
    /// keys, allowed origins and the namespaces with their permissions.
    /// Flags given on the command line or in the environment win.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    pub config: Option<String>,

    /// HMAC secret for HS256/384/512 tokens (prefer --token-hmac-secret-file:
    /// command lines are visible to other users of the machine).
    #[arg(long, env = "ROOMCAST_TOKEN_HMAC_SECRET", hide_env_values = true)]
    pub token_hmac_secret: Option<String>,

    /// A file holding the HMAC secret (trailing newline ignored).
    #[arg(long, env = "ROOMCAST_TOKEN_HMAC_SECRET_FILE")]
    pub token_hmac_secret_file: Option<String>,

    /// A PEM public key (RSA, or EC P-256 / P-384) for RS256/384/512 and
    /// ES256/384 tokens.
    #[arg(long, env = "ROOMCAST_TOKEN_PUBLIC_KEY")]
    pub token_public_key: Option<String>,

    /// Required `aud` of tokens (checked only when set).
    #[arg(long, env = "ROOMCAST_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// Required `iss` of tokens (checked only when set).
    #[arg(long, env = "ROOMCAST_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// After a connection token expires, time given to refresh it before
    /// the connection is closed 3005 "connection expired".
    #[arg(long, env = "ROOMCAST_TOKEN_EXPIRE_GRACE", value_parser = parse_duration)]
    pub token_expire_grace: Option<Duration>,

    /// With a token key: a Centrifugo connect without a token is anonymous
    /// (and the namespaces' `_for_anonymous` flags apply) instead of
    /// refused with 3500.
    #[arg(long, env = "ROOMCAST_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN")]
    pub allow_anonymous_connect_without_token: bool,

    /// Origins allowed to open a WebSocket (glob patterns, comma-separated,
    /// e.g. https://*.example.com; * allows every origin). Without it, an
    /// Origin must match the Host the request came to.
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// The HTTP server API's key (`X-API-Key`); without one (or
    /// --api-insecure) POST /api/… is 404. Prefer --api-key-file.
    #[arg(long, env = "ROOMCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A file holding the API key (trailing newline ignored).
    #[arg(long, env = "ROOMCAST_API_KEY_FILE")]
    pub api_key_file: Option<String>,

    /// Serve the HTTP server API on this address instead of --listen.
    #[arg(long, env = "ROOMCAST_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,

    /// Serve the API without a key: only with a loopback --api-listen.
    #[arg(long, env = "ROOMCAST_API_INSECURE")]
    pub api_insecure: bool,

    /// Largest server API request body in bytes; larger is answered 413.
    #[arg(long, env = "ROOMCAST_API_MAX_BODY", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(64..=64 * 1024 * 1024))]
    pub api_max_body: u64,

    /// Answer server API errors with HTTP statuses (400, 403, 404, 416, 422,
    /// 503) instead of 200 with an error body (Centrifugo's default).
    #[arg(long, env = "ROOMCAST_API_HTTP_ERRORS")]
    pub api_http_errors: bool,

    /// Serve the admin page at GET /admin, on the port of the server API
    /// (--api-listen if set). The page holds no data: it asks for the API
    /// key and sends it (X-API-Key) with every API call. Needs the API on
    /// (an API key, or --api-insecure).
    #[arg(long, env = "ROOMCAST_ADMIN")]
    pub admin: bool,
    /// On Redis: how often this node writes its announcement (its counts and rooms, what the
    /// API's info and channels list fleet-wide; it lives three intervals). 0s: not announced.
    #[arg(long, env = "ROOMCAST_NODE_ANNOUNCE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub node_announce_interval: Duration,
}

impl Cli {
    /// The hub settings these flags describe. `seed` feeds the reconnect jitter.
    pub fn hub_config(&self, seed: u64) -> HubConfig {
        HubConfig {
            limits: Limits {
                max_frame_bytes: self.max_frame_bytes as usize,
                max_room_bytes: self.max_room_bytes as usize,
                max_rooms_per_conn: self.max_rooms_per_conn as usize,
                max_outbound_bytes: self.max_outbound_bytes as usize,
                publish_buffer: self.publish_buffer,
                max_broker_payload_bytes: self
                    .max_broker_payload_bytes
                    .unwrap_or(self.max_outbound_bytes)
                    as usize,
                max_commands_per_sec: self.max_commands_per_sec,
            },
            channel_prefix: self.channel_prefix.clone(),
            backoff_base: self.reconnect_min,
            backoff_max: self.reconnect_max.max(self.reconnect_min),
            jitter_seed: seed,
            connect_timeout: self.redis_connect_timeout,
            ping_interval: self.redis_probe_interval,
            ping_timeout: self.redis_timeout,
            ..HubConfig::default()
        }
    }

    /// Flags that contradict each other: a start-up error, before anything
    /// is served.
    pub fn check(&self) -> Result<(), String> {
        if self.api_insecure && !self.api_listen.is_some_and(|a| a.ip().is_loopback()) {
            return Err(
                "--api-insecure needs --api-listen on a loopback address (e.g. 127.0.0.1:8081)"
                    .into(),
            );
        }
        if self.presence_ttl.as_secs() == 0 {
            return Err("--presence-ttl must be at least 1s".into());
        }
        if self.presence_refresh.is_zero() || self.presence_refresh >= self.presence_ttl {
            return Err(format!(
                "--presence-refresh ({:?}) must be above zero and below --presence-ttl ({:?}): \
                 entries would expire before they are refreshed",
                self.presence_refresh, self.presence_ttl
            ));
        }
        self.hub_config(0).limits.check()
    }

    /// The node these flags describe. `open_files`: the process's limit on
    /// open files, for the default `--max-connections`; `seed`: per-process
    /// entropy (reconnect jitter, the node's name).
    pub fn node_config(&self, open_files: Option<u64>, seed: u64) -> NodeConfig {
        let reserve = NodeConfig::default().operator_reserve;
        let max_sockets = self.max_connections.unwrap_or_else(|| match open_files {
            Some(n) => (n as usize).saturating_sub(FD_RESERVE).max(1),
            None => 100_000,
        });
        NodeConfig {
            hub: self.hub_config(seed),
            mode: if self.redis.is_some() {
                BrokerMode::Remote
            } else {
                BrokerMode::Local
            },
            serve_index: !self.no_chat_page,
            seed_protocol: self.seed_protocol == "on",
            max_sockets,
            operator_reserve: reserve.min(FD_RESERVE / 2),
            node_id: format!("{seed:016x}"),
            timers: ClientTimers {
                ws_ping_interval: self.ws_ping_interval,
                ws_pong_timeout: self.ws_pong_timeout,
                ping_interval: self.client_ping_interval,
                pong_timeout: self.client_pong_timeout,
                connect_timeout: self.client_connect_timeout,
            },
            wall_origin: 0,
            recovery_max_publications: self.recovery_max_publications,
            history_max_publications: self.history_max_publications,
            presence_refresh: self.presence_refresh,
            presence_ttl: self.presence_ttl,
            presence_max_members: self.presence_max_members,
            api: crate::config::ApiConfig {
                insecure: self.api_insecure,
                max_body: self.api_max_body,
                http_errors: self.api_http_errors,
                own_listener: self.api_listen.is_some(),
                admin: self.admin,
                announce_interval: self.node_announce_interval,
                ..Default::default()
            },
        }
    }

    /// The WebSocket layer's buffer sizes for these limits: an idle
    /// connection holds a small read buffer, and no buffer is unbounded (the
    /// write buffer holds at most two outboxes and one frame).
    pub fn ws_buffers(&self) -> WsBuffers {
        let frame = self.max_frame_bytes as usize;
        let write = 4096;
        WsBuffers {
            // Client frames are small (a join, a publish of a chat line):
            // 512 bytes hold several per read. Every connection keeps this
            // buffer (tungstenite also zero-fills it before each read); a
            // larger frame is read in more than one.
            read: 512,
            write,
            // tungstenite requires more than the write buffer.
            max_write: (self.max_outbound_bytes as usize * 2 + frame + 1024).max(2 * write),
            max_frame: frame,
        }
    }

    /// At shutdown, how long to wait for every socket to finish its close
    /// handshake: the grace, and a little for the sockets to be let go.
    pub fn drain_wait(&self) -> Duration {
        self.shutdown_grace + Duration::from_millis(500)
    }

    /// Defaults, as if run with no flags (for embedding and tests).
    pub fn defaults() -> Cli {
        Cli::parse_from(["roomcast"])
    }

    /// The one line logged at start.
    pub fn describe(&self, listen: SocketAddr) -> String {
        let broker = match &self.redis {
            Some(url) => format!("Redis at {}", redact(url)),
            None => "the embedded single-node broker (no --redis given)".into(),
        };
        let page = if self.no_chat_page {
            String::new()
        } else {
            format!("; chat page at http://{listen}/")
        };
        let admin = match (self.admin, self.api_listen) {
            (false, _) => String::new(),
            (true, Some(api)) => format!("; admin page at http://{api}/admin"),
            (true, None) => format!("; admin page at http://{listen}/admin"),
        };
        let mode = if self.config.is_none()
            && self.token_hmac_secret.is_none()
            && self.token_hmac_secret_file.is_none()
            && self.token_public_key.is_none()
        {
            "; OPEN MODE: no token key and no config, so anyone who can reach this port connects anonymously and may join and publish in every room"
        } else {
            ""
        };
        format!("roomcast listening on ws://{listen} using {broker}{page}{admin}{mode}")
    }
}

/// Descriptors kept back from `--max-connections`'s default: the Redis
/// links, the listener, standard streams, and the operator reserve (sockets
/// beyond the limit that still answer `/healthz` and `/metrics`).
pub const FD_RESERVE: usize = 64;

/// Buffer sizes for the WebSocket library, from [`Cli::ws_buffers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsBuffers {
    /// Read buffer (grows only for a larger frame).
    pub read: usize,
    /// Writes are buffered up to this before going to the socket.
    pub write: usize,
    /// The most bytes the write buffer may hold.
    pub max_write: usize,
    /// The largest frame and message accepted.
    pub max_frame: usize,
}

/// Hides a password in a Redis URL (for logs and errors).
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

/// Checks a Redis URL's scheme at flag parsing, for a clear error at once:
/// `redis://` or `valkey://` (`[user][:password@]host[:port][/db]`), or
/// `unix://`, `redis+unix://`, `valkey+unix://` (a socket path); TLS
/// (`rediss://`) is not built in. The rest of the URL is redis-rs's to
/// judge: the runtimes open it with redis-rs before serving and refuse what
/// it refuses, so a node never starts with a URL it cannot use, and this
/// check never refuses one redis-rs would take (`tests/tests/binary.rs`
/// holds both to redis-rs's parser).
pub fn parse_redis_url(s: &str) -> Result<String, String> {
    // As the URL parser, ignore leading and trailing spaces and controls.
    let url = s.trim_matches(|c: char| c <= ' ');
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis" | "valkey" | "unix" | "redis+unix" | "valkey+unix") => Ok(s.to_string()),
        Some("rediss" | "valkeys") => Err(format!(
            "invalid Redis URL {:?}: TLS (rediss://) is not supported",
            redact(s)
        )),
        _ => Err(format!(
            "invalid Redis URL {:?}: expected redis://host:port or unix:///path",
            redact(s)
        )),
    }
}

/// Parses `250ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 10s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_core_defaults() {
        let cli = Cli::defaults();
        assert_eq!(cli.listen, "127.0.0.1:8080".parse().unwrap());
        let cfg = cli.hub_config(HubConfig::default().jitter_seed);
        assert_eq!(cfg, HubConfig::default());
        let node = cli.node_config(Some(20_000), 1);
        assert_eq!(node.max_sockets, 20_000 - FD_RESERVE);
        assert_eq!(node.timers, ClientTimers::default());
        assert_eq!(cli.node_config(None, 1).max_sockets, 100_000);
        assert!(cli.check().is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn redis_urls() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://:pw@h:1/3",
            "REDIS://h:1",
            "valkey://h:1",
            "unix:///run/redis.sock",
            "unix:/run/redis.sock",
            "redis+unix:///run/redis.sock?db=2",
            " redis://h:1\n",
            // Refused later, by redis-rs: the flag check sees only the scheme.
            "redis://h:port",
        ] {
            assert_eq!(parse_redis_url(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "http://x",
            "localhost:6379",
            "rediss://h:1",
            "valkeys://h:1",
            "",
        ] {
            assert!(parse_redis_url(bad).is_err(), "{bad} accepted");
        }
        let err = parse_redis_url("rediss://user:secret@h:1").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert_eq!(redact("redis://:pw@h:1"), "redis://***@h:1");
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "roomcast",
            "--listen",
            "0.0.0.0:9000",
            "--redis",
            "redis://127.0.0.1:7000",
            "--max-frame-bytes",
            "1024",
            "--no-chat-page",
        ])
        .unwrap();
        assert_eq!(cli.hub_config(0).limits.max_frame_bytes, 1024);
        assert!(cli.no_chat_page);
        assert!(Cli::try_parse_from(["roomcast", "--listen", "nope"]).is_err());
        assert!(Cli::try_parse_from(["roomcast", "--redis", "http://x"]).is_err());
        let bad = Cli::try_parse_from(["roomcast", "--max-frame-bytes", "2000000"]).unwrap();
        assert!(bad.check().unwrap_err().contains("--max-outbound-bytes"));
        for args in [
            &["--presence-refresh", "60s"][..],
            &["--presence-refresh", "0s"],
            &["--presence-ttl", "500ms"],
        ] {
            let bad = Cli::try_parse_from(std::iter::once("roomcast").chain(args.iter().copied()))
                .unwrap();
            assert!(bad.check().unwrap_err().contains("--presence-"), "{args:?}");
        }
    }
}
