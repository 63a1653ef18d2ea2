//! `/metrics` in the Prometheus text exposition format, rendered from plain
//! numbers ([`Snapshot`]) that the node copies out: nothing here knows the
//! node, and nothing is rendered under its locks.

use std::fmt::Write;

use crate::hub::BrokerCounters;

/// Every number `/metrics` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connections: usize,
    pub sockets: usize,
    pub rooms: usize,
    pub broker_up: bool,
    pub subscriptions: usize,
    pub publish_buffer_depth: usize,
    pub pending_subscription_changes: usize,
    pub broker: BrokerCounters,
    pub connections_opened: u64,
    pub frames_received: u64,
    pub broker_messages: u64,
    pub deliveries: u64,
    pub slow_consumer_closes: u64,
    pub broker_payloads_dropped: u64,
    pub broker_payloads_too_large: u64,
    pub rate_limited: u64,
    pub no_pong_closes: u64,
    pub origin_refused: u64,
    pub auth_refused: u64,
    /// Connections closed for bad input, by reason label.
    pub bad_frames: Vec<(&'static str, u64)>,
    /// Centrifugo-protocol frames and commands refused, by reason label.
    pub cf_bad_commands: Vec<(&'static str, u64)>,
    /// Subscribes that asked to recover, by outcome.
    pub recovered: u64,
    pub not_recovered: u64,
    /// Subscriptions ended (unsubscribe 2500) because their position broke.
    pub insufficient_state: u64,
    /// Reads of a room's stream to fill the node's own gap, and the
    /// publications that were gone from it by then.
    pub heals: u64,
    pub history_gaps: u64,
    /// Presence rooms this node has clients in, and those over their cap
    /// (join/leave off).
    pub presence_rooms: usize,
    pub presence_capped_rooms: usize,
    /// Rooms that went over their presence cap, and refreshes of this
    /// node's presence entries.
    pub presence_capped: u64,
    pub presence_refreshes: u64,
    pub handshake_failures: u64,
    pub rejected_connections: u64,
    pub http_requests: u64,
    pub accept_errors: u64,
}

/// The HTTP server API's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiMetrics {
    /// Method labels, one per row of `requests` and `latency`.
    pub methods: Vec<&'static str>,
    /// Result labels, one per column of `requests`.
    pub results: Vec<&'static str>,
    pub requests: Vec<Vec<u64>>,
    /// Upper bounds (seconds) of the latency buckets; `latency` rows have
    /// one more count, for `+Inf`. Counts per bucket, not cumulative.
    pub buckets: Vec<f64>,
    pub latency: Vec<Vec<u64>>,
    pub latency_sum_seconds: Vec<f64>,
    /// Requests refused for a missing or wrong `X-API-Key`.
    pub unauthorized: u64,
    /// Requests refused for a body over `--api-max-body`.
    pub too_large: u64,
}

/// Appends the API's metrics: requests by method and result, their
/// latency as a histogram by method, and the refusals before a method.
pub fn render_api(m: &ApiMetrics, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP roomcast_api_requests_total Server API requests answered, by method and result.\n# TYPE roomcast_api_requests_total counter"
    );
    for (method, row) in m.methods.iter().zip(&m.requests) {
        for (result, n) in m.results.iter().zip(row) {
            let _ = writeln!(
                out,
                "roomcast_api_requests_total{{method=\"{method}\",result=\"{result}\"}} {n}"
            );
        }
    }
    let name = "roomcast_api_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Server API request latency, body read to answer.\n# TYPE {name} histogram"
    );
    for ((method, row), sum) in m.methods.iter().zip(&m.latency).zip(&m.latency_sum_seconds) {
        let mut total = 0;
        for (i, n) in row.iter().enumerate() {
            total += n;
            let le = m
                .buckets
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{method=\"{method}\",le=\"{le}\"}} {total}"
            );
        }
        let _ = writeln!(out, "{name}_sum{{method=\"{method}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{method=\"{method}\"}} {total}");
    }
    for (n, help, v) in [
        (
            "roomcast_api_unauthorized_total",
            "Server API requests refused (401) for a missing or wrong X-API-Key.",
            m.unauthorized,
        ),
        (
            "roomcast_api_body_too_large_total",
            "Server API requests refused (413) for a body over --api-max-body.",
            m.too_large,
        ),
    ] {
        let _ = writeln!(out, "# HELP {n} {help}\n# TYPE {n} counter\n{n} {v}");
    }
}

/// Renders every metric.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(6144);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let b = &s.broker;
    let rows: [(&str, &str, &str, u64); 38] = [
        (
            "roomcast_presence_rooms",
            "gauge",
            "Presence rooms this node has clients in.",
            s.presence_rooms as u64,
        ),
        (
            "roomcast_presence_capped_rooms",
            "gauge",
            "Presence rooms over their member cap (--presence-max-members): no join/leave pushes.",
            s.presence_capped_rooms as u64,
        ),
        (
            "roomcast_presence_capped_total",
            "counter",
            "Times a presence room went over its member cap and stopped join/leave pushes.",
            s.presence_capped,
        ),
        (
            "roomcast_presence_refreshes_total",
            "counter",
            "Refreshes of this node's presence entries in Redis.",
            s.presence_refreshes,
        ),
        (
            "roomcast_recovered_total",
            "counter",
            "Subscribes that asked to recover and were answered recovered: true.",
            s.recovered,
        ),
        (
            "roomcast_not_recovered_total",
            "counter",
            "Subscribes that asked to recover and were answered recovered: false (epoch changed, position beyond the stream, or too much missed).",
            s.not_recovered,
        ),
        (
            "roomcast_insufficient_state_total",
            "counter",
            "Subscriptions ended with unsubscribe 2500 because their position could not continue.",
            s.insufficient_state,
        ),
        (
            "roomcast_heals_total",
            "counter",
            "Reads of a room's history to deliver what the node's Redis link missed.",
            s.heals,
        ),
        (
            "roomcast_history_gaps_total",
            "counter",
            "Publications the node missed that were no longer in the room's history when it healed.",
            s.history_gaps,
        ),
        (
            "roomcast_origin_refused_total",
            "counter",
            "WebSocket upgrades refused (403) for an Origin not allowed.",
            s.origin_refused,
        ),
        (
            "roomcast_auth_refused_total",
            "counter",
            "Connections refused for a missing, invalid or expired token (upgrades refused 401, Centrifugo connects refused).",
            s.auth_refused,
        ),
        (
            "roomcast_connections",
            "gauge",
            "Open WebSocket connections.",
            s.connections as u64,
        ),
        (
            "roomcast_sockets",
            "gauge",
            "Open sockets: WebSocket connections, plus handshakes, HTTP requests and closes in progress.",
            s.sockets as u64,
        ),
        (
            "roomcast_rooms",
            "gauge",
            "Rooms with at least one local member.",
            s.rooms as u64,
        ),
        (
            "roomcast_broker_subscriptions",
            "gauge",
            "Broker channels subscribed for rooms (while the broker is up).",
            s.subscriptions as u64,
        ),
        (
            "roomcast_broker_up",
            "gauge",
            "1 when the broker link is up and proven (its probe came back), or the broker is embedded.",
            u64::from(s.broker_up),
        ),
        (
            "roomcast_broker_pending_subscription_changes",
            "gauge",
            "Subscription changes waiting for the broker link (coalesced per channel).",
            s.pending_subscription_changes as u64,
        ),
        (
            "roomcast_connections_opened_total",
            "counter",
            "WebSocket connections opened.",
            s.connections_opened,
        ),
        (
            "roomcast_frames_received_total",
            "counter",
            "Frames received from clients.",
            s.frames_received,
        ),
        (
            "roomcast_messages_published_total",
            "counter",
            "Publishes the broker confirmed.",
            b.published,
        ),
        (
            "roomcast_publishes_unknown_total",
            "counter",
            "Publishes lost with a failing broker link: the broker may or may not have delivered them.",
            b.unknown,
        ),
        (
            "roomcast_broker_messages_total",
            "counter",
            "Messages received from the broker.",
            s.broker_messages,
        ),
        (
            "roomcast_deliveries_total",
            "counter",
            "Messages queued to local members.",
            s.deliveries,
        ),
        (
            "roomcast_slow_consumer_closes_total",
            "counter",
            "Connections closed because they did not read what was sent to them.",
            s.slow_consumer_closes,
        ),
        (
            "roomcast_broker_connects_total",
            "counter",
            "Broker links that proved themselves (their first probe came back).",
            b.connects,
        ),
        (
            "roomcast_broker_failures_total",
            "counter",
            "Broker connection attempts that failed and links that broke.",
            b.failures,
        ),
        (
            "roomcast_broker_payloads_dropped_total",
            "counter",
            "Broker messages dropped because they did not parse or matched no channel.",
            s.broker_payloads_dropped,
        ),
        (
            "roomcast_broker_payloads_too_large_total",
            "counter",
            "Broker messages dropped because they exceeded --max-broker-payload-bytes.",
            s.broker_payloads_too_large,
        ),
        (
            "roomcast_publish_buffer_depth",
            "gauge",
            "Publishes held for the broker link.",
            s.publish_buffer_depth as u64,
        ),
        (
            "roomcast_publish_buffer_dropped_total",
            "counter",
            "Publishes dropped because the publish buffer was full.",
            b.buffer_dropped + b.queue_dropped,
        ),
        (
            "roomcast_rate_limited_total",
            "counter",
            "Commands refused by --max-commands-per-sec.",
            s.rate_limited,
        ),
        (
            "roomcast_no_pong_closes_total",
            "counter",
            "Connections closed because they did not answer a keepalive ping.",
            s.no_pong_closes,
        ),
        (
            "roomcast_handshake_failures_total",
            "counter",
            "Connections dropped before a WebSocket handshake completed.",
            s.handshake_failures,
        ),
        (
            "roomcast_rejected_connections_total",
            "counter",
            "Connections refused at the connection limit.",
            s.rejected_connections,
        ),
        (
            "roomcast_http_requests_total",
            "counter",
            "Plain HTTP requests served.",
            s.http_requests,
        ),
        (
            "roomcast_accept_errors_total",
            "counter",
            "Failed accepts (out of file descriptors and the like).",
            s.accept_errors,
        ),
        (
            "roomcast_broker_publishes_total",
            "counter",
            "Publishes handed to the broker link (confirmed or not).",
            b.published + b.unknown,
        ),
        (
            "roomcast_broker_queue_dropped_total",
            "counter",
            "Publishes dropped because the queue to a live broker link was full.",
            b.queue_dropped,
        ),
    ];
    for (name, kind, help, value) in rows {
        metric(name, kind, help, value);
    }
    let _ = writeln!(
        out,
        "# HELP roomcast_bad_frames_total Connections closed for bad input, by reason.\n# TYPE roomcast_bad_frames_total counter"
    );
    for (label, n) in &s.bad_frames {
        let _ = writeln!(out, "roomcast_bad_frames_total{{reason=\"{label}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP roomcast_centrifugo_bad_commands_total Centrifugo-protocol frames (closed 3501) and commands (answered 107/104) refused, by reason.\n# TYPE roomcast_centrifugo_bad_commands_total counter"
    );
    for (label, n) in &s.cf_bad_commands {
        let _ = writeln!(
            out,
            "roomcast_centrifugo_bad_commands_total{{reason=\"{label}\"}} {n}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_number() {
        let s = Snapshot {
            connections: 1,
            rooms: 1,
            broker_up: true,
            frames_received: 2,
            bad_frames: vec![("binary", 1), ("not_json", 0)],
            ..Snapshot::default()
        };
        let text = render(&s);
        for line in [
            "roomcast_connections 1",
            "roomcast_rooms 1",
            "roomcast_broker_up 1",
            "roomcast_frames_received_total 2",
            "roomcast_bad_frames_total{reason=\"binary\"} 1",
            "roomcast_bad_frames_total{reason=\"not_json\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
