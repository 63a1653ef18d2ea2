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
    /// dropped and counted.
    pub publish_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_room_bytes: 256,
            max_rooms_per_conn: 256,
            max_outbound_bytes: 1024 * 1024,
            publish_buffer: 10_000,
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
    /// How often a connected broker is pinged (default 2 s).
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the broker is declared lost (default 3 s).
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
