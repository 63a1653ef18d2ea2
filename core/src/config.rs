//! Limits and policy settings. Every value has a production default and can
//! be changed (the binaries expose each as a flag).

use std::time::Duration;

/// Per-connection and per-node limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest client frame accepted, in bytes (default 64 KiB). Larger → close 1009.
    pub max_frame_bytes: usize,
    /// Longest room name, in bytes of UTF-8 (default 256). Empty names are refused too.
    pub max_room_bytes: usize,
    /// Most rooms one connection may be in at once (default 256).
    pub max_rooms_per_conn: usize,
    /// Bytes a connection may have queued for sending before it is closed as a
    /// slow consumer (default 1 MiB).
    pub max_outbound_bytes: usize,
    /// Messages held while the broker is unreachable (default 10,000); more are
    /// dropped and counted. Also the bound of the queue to a live link.
    pub publish_buffer: usize,
    /// Largest payload accepted from the broker (default 1 MiB); larger ones
    /// are dropped and counted.
    pub max_broker_payload_bytes: usize,
    /// Commands one connection may send per second, both protocols (0: no
    /// limit, the default).
    pub max_commands_per_sec: u32,
}

impl Limits {
    /// Limits that contradict each other, as a start-up error: a frame or a
    /// broker payload that could never fit an outbox beside another.
    pub fn check(&self) -> Result<(), String> {
        if self.max_frame_bytes > self.max_outbound_bytes {
            return Err(format!(
                "--max-frame-bytes ({}) must not exceed --max-outbound-bytes ({}): a member could not be sent a frame its peer may send",
                self.max_frame_bytes, self.max_outbound_bytes
            ));
        }
        if self.max_broker_payload_bytes > self.max_outbound_bytes {
            return Err(format!(
                "--max-broker-payload-bytes ({}) must not exceed --max-outbound-bytes ({})",
                self.max_broker_payload_bytes, self.max_outbound_bytes
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_room_bytes: 256,
            max_rooms_per_conn: 256,
            max_outbound_bytes: 1024 * 1024,
            publish_buffer: 10_000,
            max_broker_payload_bytes: 1024 * 1024,
            max_commands_per_sec: 0,
        }
    }
}

/// Everything the hub needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    pub limits: Limits,
    /// Prepended to a room name to make its broker channel (default empty, as the tutorial server).
    pub channel_prefix: String,
    /// First reconnect delay; doubles per failed attempt (default 100 ms).
    pub backoff_base: Duration,
    /// Longest reconnect delay (default 5 s).
    pub backoff_max: Duration,
    /// Seed of the jitter applied to reconnect delays.
    pub jitter_seed: u64,
    /// How long a connection attempt may take before it is abandoned (default 3 s).
    pub connect_timeout: Duration,
    /// How often a connected broker is probed (default 2 s).
    pub ping_interval: Duration,
    /// How long a probe may go unanswered before the broker is declared lost (default 3 s).
    pub ping_timeout: Duration,
    /// Most channels in one subscribe or unsubscribe command (default 1,000).
    pub subscribe_batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            limits: Limits::default(),
            channel_prefix: String::new(),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            jitter_seed: 0x005e_ed0f_2009,
            connect_timeout: Duration::from_secs(3),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(3),
            subscribe_batch: 1000,
        }
    }
}

/// Per-connection timers of both client protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTimers {
    /// Seed protocol: a WebSocket ping after this much silence (default 25 s).
    pub ws_ping_interval: Duration,
    /// Seed protocol: a peer silent this long after a ping is closed 1008
    /// "no pong" (default 10 s).
    pub ws_pong_timeout: Duration,
    /// Centrifugo protocol: the server's `{}` ping interval (default 25 s).
    pub ping_interval: Duration,
    /// Centrifugo protocol: a client that has not answered a ping within
    /// this is closed 3012 "no pong" (default 8 s).
    pub pong_timeout: Duration,
    /// Centrifugo protocol: no `connect` within this closes 3502 "stale"
    /// (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for ClientTimers {
    fn default() -> Self {
        ClientTimers {
            ws_ping_interval: Duration::from_secs(25),
            ws_pong_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a node needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub hub: HubConfig,
    pub mode: crate::hub::BrokerMode,
    /// Whether `GET /` serves the chat page.
    pub serve_index: bool,
    /// Whether the seed protocol is served (every path but the Centrifugo
    /// endpoint).
    pub seed_protocol: bool,
    /// Most connections (WebSocket and HTTP) at once.
    pub max_sockets: usize,
    /// Sockets beyond `max_sockets` kept for `/healthz` and `/metrics`, so a
    /// full node still answers its operators.
    pub operator_reserve: usize,
    /// This node's name in the fleet (its probe channel, its clients' ids).
    pub node_id: String,
    pub timers: ClientTimers,
    /// Wall-clock time (seconds since the Unix epoch) at the node's time
    /// zero: token expiry is wall-clock, the node's clock is not.
    pub wall_origin: u64,
    /// The most publications a subscribe recovers (default 300): more
    /// missed is `recovered: false`.
    pub recovery_max_publications: u64,
    /// The most publications one history request returns (default 300).
    pub history_max_publications: usize,
    /// Presence: how often a node re-adds its own clients (default 25 s).
    pub presence_refresh: Duration,
    /// Presence: how long an entry lives unless refreshed (default 60 s):
    /// how long a crashed node's clients stay listed.
    pub presence_ttl: Duration,
    /// Presence rooms larger than this stop join/leave pushes (default
    /// 1000; a namespace's `presence_max_members` wins; 0: no cap).
    pub presence_max_members: usize,
    /// The HTTP server API.
    pub api: ApiConfig,
}

/// The HTTP server API's settings (`--api-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Serve the API without checking `X-API-Key` (`--api-insecure`, only
    /// with a loopback `--api-listen`).
    pub insecure: bool,
    /// The largest request body (`--api-max-body`, default 1 MiB): larger
    /// is answered 413 and the connection closed.
    pub max_body: u64,
    /// Errors as HTTP statuses (`--api-http-errors`) instead of 200 with
    /// an error body.
    pub http_errors: bool,
    /// The API has its own listener (`--api-listen`): the main port does
    /// not serve it.
    pub own_listener: bool,
    /// Requests one kept-alive connection may carry before it is closed.
    pub max_requests_per_conn: u32,
    /// Serve the admin page at `GET /admin` (`--admin`), on the port that
    /// serves the API (the page calls it from the same origin).
    pub admin: bool,
    /// On Redis, how often the node writes its announcement (its counts
    /// and rooms, for `info` and `channels`; default 5 s; it lives three
    /// intervals). Zero: the node does not announce itself.
    pub announce_interval: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            insecure: false,
            max_body: 1024 * 1024,
            http_errors: false,
            own_listener: false,
            max_requests_per_conn: 1000,
            admin: false,
            announce_interval: Duration::from_secs(5),
        }
    }
}

/// How long a room's stream metadata (epoch, top offset) is kept when its
/// namespace does not say (`history_meta_ttl`): 30 days, as Centrifugo.
pub const DEFAULT_HISTORY_META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            hub: HubConfig::default(),
            mode: crate::hub::BrokerMode::Local,
            serve_index: true,
            seed_protocol: true,
            max_sockets: usize::MAX,
            operator_reserve: 32,
            node_id: "node".into(),
            timers: ClientTimers::default(),
            wall_origin: 0,
            recovery_max_publications: 300,
            history_max_publications: 300,
            presence_refresh: Duration::from_secs(25),
            presence_ttl: Duration::from_secs(60),
            presence_max_members: 1000,
            api: ApiConfig::default(),
        }
    }
}
