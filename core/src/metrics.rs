//! `/metrics` in the Prometheus text exposition format.

use std::fmt::Write;

use crate::node::Node;
use crate::seed::FrameError;

/// Renders every metric of a node.
pub fn render(node: &Node) -> String {
    let hub = node.hub();
    let io = node.io_stats();
    let c = hub.counters();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "roomcast_connections",
        "gauge",
        "Open WebSocket connections.",
        hub.connections() as u64,
    );
    metric(
        "roomcast_sockets",
        "gauge",
        "Open sockets: WebSocket connections, plus handshakes, HTTP requests and closes in progress.",
        node.sockets() as u64,
    );
    metric(
        "roomcast_connections_opened_total",
        "counter",
        "WebSocket connections accepted.",
        c.connections_opened,
    );
    metric(
        "roomcast_rooms",
        "gauge",
        "Rooms with at least one local member.",
        hub.rooms() as u64,
    );
    metric(
        "roomcast_broker_subscriptions",
        "gauge",
        "Broker channel subscriptions held.",
        hub.subscriptions() as u64,
    );
    metric(
        "roomcast_broker_up",
        "gauge",
        "1 when the broker is connected.",
        u64::from(hub.broker_up()),
    );
    metric(
        "roomcast_frames_received_total",
        "counter",
        "Frames received from clients.",
        c.frames_received,
    );
    metric(
        "roomcast_messages_published_total",
        "counter",
        "Messages handed to the broker.",
        c.messages_published,
    );
    metric(
        "roomcast_broker_messages_total",
        "counter",
        "Messages received from the broker.",
        c.broker_messages,
    );
    metric(
        "roomcast_deliveries_total",
        "counter",
        "Messages queued to local members.",
        c.deliveries,
    );
    metric(
        "roomcast_slow_consumer_closes_total",
        "counter",
        "Connections closed because their outbound queue was full.",
        c.slow_consumer_closes,
    );
    metric(
        "roomcast_broker_connects_total",
        "counter",
        "Successful broker (re)connections.",
        c.broker_connects,
    );
    metric(
        "roomcast_broker_failures_total",
        "counter",
        "Broker connection attempts that failed and links that broke.",
        c.broker_failures,
    );
    metric(
        "roomcast_broker_payloads_dropped_total",
        "counter",
        "Broker messages dropped because they did not parse or matched no channel.",
        c.broker_payloads_dropped,
    );
    metric(
        "roomcast_publish_buffer_depth",
        "gauge",
        "Messages held while the broker is down.",
        hub.publish_buffer_depth() as u64,
    );
    metric(
        "roomcast_publish_buffer_dropped_total",
        "counter",
        "Messages dropped because the publish buffer was full.",
        c.publish_buffer_dropped + node.broker_queue_dropped(),
    );
    metric(
        "roomcast_handshake_failures_total",
        "counter",
        "Connections dropped before a WebSocket handshake completed.",
        io.handshake_failures,
    );
    metric(
        "roomcast_rejected_connections_total",
        "counter",
        "Connections refused at the connection limit.",
        io.rejected_connections,
    );
    metric(
        "roomcast_http_requests_total",
        "counter",
        "Plain HTTP requests served.",
        io.http_requests,
    );
    let _ = writeln!(
        out,
        "# HELP roomcast_bad_frames_total Connections closed for bad input, by reason.\n# TYPE roomcast_bad_frames_total counter"
    );
    for (label, n) in FrameError::LABELS.iter().zip(c.bad_frames) {
        let _ = writeln!(out, "roomcast_bad_frames_total{{reason=\"{label}\"}} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;
    use crate::hub::Inbound;
    use crate::node::BrokerMode;
    use std::time::Duration;

    #[test]
    fn renders_counts() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Local, Duration::ZERO);
        let a = n.open();
        n.frame(a, Inbound::Text(br#"{"type":"SUBSCRIBE","room":"r"}"#));
        let b = n.open();
        n.frame(b, Inbound::Binary);
        let text = render(&n);
        for line in [
            "roomcast_connections 1",
            "roomcast_rooms 1",
            "roomcast_broker_subscriptions 1",
            "roomcast_broker_up 1",
            "roomcast_frames_received_total 2",
            "roomcast_bad_frames_total{reason=\"binary\"} 1",
            "roomcast_bad_frames_total{reason=\"not_json\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
