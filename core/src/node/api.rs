//! The HTTP server API on the node: a request whose head
//! [`Node::answer`] let through ([`Reply::Api`]) is answered here, at once
//! ([`ApiCall::Ready`]) or once the broker has answered
//! ([`ApiCall::Pending`], a waiter per broker request, like the client
//! protocol's history reads).
//!
//! A runtime: reads the body ([`ApiRequest::missing`],
//! [`ApiRequest::extend`]), calls [`Node::api`], waits on an
//! [`ApiPending`] (bounded by [`Node::api_wait`]), writes what
//! [`Node::api_respond`] gives and, if that also gave the next
//! [`Admitted`], reads the connection's next request.
//!
//! Lock order: the idempotency cache, then what publishing takes (a room's
//! stream, the hub, the waiters, an outbox).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::control::Control;
use super::history::{HistoryOpts, Waiter};
use super::{Admitted, Node, Publication, Reply, add, lock};
use crate::codec::api::{self as a, ApiError, ApiMethod, IDEMPOTENCY_TTL};
use crate::codec::envelope;
use crate::codec::http::{self, ApiHead, HeadReader};
use crate::codec::redis::{self as r, Call, HistoryKeys, Reply as RedisReply};
use crate::codec::seed::Message;
use crate::hub::stream::{Read, StreamPos};
use crate::hub::{BrokerMode, Outbound, Queued};
use crate::metrics::ApiMetrics;

/// The most idempotency keys remembered in memory (embedded broker); past
/// it, an idempotent publish is refused with 106 until keys expire.
pub const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// A `disconnect` without a code closes with this (Centrifugo's "force
/// disconnect")…
pub const DISCONNECT_CODE: u32 = 3503;
/// …and this reason.
pub const DISCONNECT_REASON: &str = "force disconnect";
/// The longest close reason (a WebSocket close frame's payload is at most
/// 125 bytes, 2 of them the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// Latency buckets of `roomcast_api_request_duration_seconds`.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The results counted per method: `ok`, or the error's name.
pub const RESULT_LABELS: [&str; 9] = [
    "ok",
    "internal",
    "unknown_channel",
    "permission_denied",
    "method_not_found",
    "limit_exceeded",
    "bad_request",
    "not_available",
    "unrecoverable_position",
];
const RESULT_CODES: [u32; 9] = [0, 100, 102, 103, 104, 106, 107, 108, 112];

/// The method labels: every method, then `unknown`.
const METHODS: usize = ApiMethod::ALL.len() + 1;

/// The API's counters and the embedded broker's idempotency cache.
#[derive(Debug, Default)]
pub(super) struct ApiState {
    idem: Mutex<Idem>,
    requests: [[AtomicU64; RESULT_LABELS.len()]; METHODS],
    latency: [[AtomicU64; LATENCY_BUCKETS.len() + 1]; METHODS],
    latency_micros: [AtomicU64; METHODS],
    unauthorized: AtomicU64,
    too_large: AtomicU64,
}

/// A room and an idempotency key.
type IdemKey = (Box<str>, Box<str>);

/// Idempotency keys in memory: each key's result, expiring in insertion
/// order (every key lives [`IDEMPOTENCY_TTL`]).
#[derive(Debug, Default)]
struct Idem {
    results: HashMap<IdemKey, Option<(u64, Box<str>)>>,
    order: VecDeque<(Duration, Box<str>, Box<str>)>,
}

impl Idem {
    fn expire(&mut self, now: Duration) {
        while let Some((at, _, _)) = self.order.front() {
            if *at > now {
                break;
            }
            if let Some((_, room, key)) = self.order.pop_front() {
                self.results.remove(&(room, key));
            }
        }
    }
}

/// A server API request past its head: its body is read into it.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiRequest {
    head: ApiHead,
    /// The body so far, and whatever followed it.
    buf: Vec<u8>,
    full: bool,
    api_port: bool,
}

impl ApiRequest {
    /// Body bytes still to read.
    pub fn missing(&self) -> usize {
        (self.head.content_length as usize).saturating_sub(self.buf.len())
    }

    /// Bytes read from the connection.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

/// What [`Node::api`] gives.
#[derive(Debug)]
pub enum ApiCall {
    Ready(ApiAnswer),
    /// Wait for it ([`ApiPending::poll`]), then [`ApiPending::finish`].
    Pending(ApiPending),
}

/// The request's context, carried to its response.
#[derive(Debug)]
struct Meta {
    method: Option<ApiMethod>,
    started: Duration,
    keep_alive: bool,
    transport_errors: bool,
    /// What followed the body: the next request's start.
    leftover: Vec<u8>,
    full: bool,
    api_port: bool,
    broadcast: bool,
}

/// An answer, ready for [`Node::api_respond`].
#[derive(Debug)]
pub struct ApiAnswer {
    meta: Meta,
    body: Result<String, ApiError>,
}

/// An answer waiting for the broker.
#[derive(Debug)]
pub struct ApiPending {
    meta: Meta,
    slot: Arc<Slot>,
}

impl ApiPending {
    /// Ready once every broker request of it was answered (or failed).
    #[must_use = "work a task must carry out, or a waker registration it relies on"]
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.slot.0);
        if s.left == 0 {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// The answer: what came back, and 100 for what did not (yet).
    pub fn finish(self) -> ApiAnswer {
        let parts = std::mem::take(&mut lock(&self.slot.0).parts);
        let parts = parts
            .into_iter()
            .map(|p| {
                p.unwrap_or_else(|| {
                    Err(ApiError::INTERNAL
                        .with_message("internal server error: the broker did not answer in time"))
                })
            })
            .collect();
        answer(self.meta, parts)
    }
}

fn answer(meta: Meta, mut parts: Vec<Result<String, ApiError>>) -> ApiAnswer {
    let body = if meta.broadcast {
        let encoded: Vec<String> = parts
            .iter()
            .map(|p| match p {
                Ok(r) => a::encode_result(r),
                Err(e) => e.encode(),
            })
            .collect();
        Ok(a::broadcast_result(encoded.iter().map(String::as_str)))
    } else {
        parts.pop().unwrap_or(Err(ApiError::INTERNAL))
    };
    ApiAnswer { meta, body }
}

/// The answers of one request's broker requests, one part each.
#[derive(Debug)]
pub(super) struct Slot(Mutex<SlotState>);

#[derive(Debug)]
struct SlotState {
    parts: Vec<Option<Result<String, ApiError>>>,
    left: usize,
    waker: Option<Waker>,
}

impl Slot {
    fn new(n: usize) -> Arc<Slot> {
        Arc::new(Slot(Mutex::new(SlotState {
            parts: (0..n).map(|_| None).collect(),
            left: n,
            waker: None,
        })))
    }

    fn fill(&self, part: usize, r: Result<String, ApiError>) {
        let w = {
            let mut s = lock(&self.0);
            match s.parts.get_mut(part) {
                Some(p @ None) => {
                    *p = Some(r);
                    s.left -= 1;
                }
                _ => return,
            }
            if s.left == 0 { s.waker.take() } else { None }
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// A broker request of an API request.
#[derive(Debug)]
pub(super) struct ApiWait {
    slot: Arc<Slot>,
    part: usize,
    kind: WaitKind,
}

#[derive(Debug)]
enum WaitKind {
    /// The publish script: `{offset, epoch, from_cache}`.
    PublishHistory,
    /// A `PUBLISH` or the publish-once script: any integer.
    PublishPlain,
    History {
        since: Option<StreamPos>,
    },
    HistoryRemove,
    /// The fleet's announcements, for `info`.
    Info,
    /// The fleet's announcements, for `channels`.
    Channels {
        pattern: Option<String>,
    },
    /// A presence read (`PRESENCE_GET`): `presence` or `presence_stats`.
    Presence {
        stats: bool,
    },
}

/// A publication's data as a message, as a client's publish makes it: a
/// JSON string is the string itself.
/// The message of an API publish's `data`: a string as text, other JSON
/// without its insignificant white space, as the client codecs make it (so
/// a publish reads the same from a client and from a backend).
fn message_of(data: &str) -> Message<'_> {
    if data.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<&str>(data) {
            return Message::Text(s.into());
        }
        if let Ok(s) = serde_json::from_str::<String>(data) {
            return Message::Text(s.into());
        }
    }
    Message::Json(crate::codec::seed::compact_json(data))
}

/// `*` (any run) and `?` (one character) globbing, case-sensitive.
pub(super) fn glob(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Node {
    /// The head of `POST /api/…` (from [`Node::answer`]): refused here (API
    /// off: 404; a missing or wrong key: 401; a body over the limit: 413),
    /// or let through to read its body.
    pub(super) fn api_admit(
        &self,
        head: ApiHead,
        mut buf: Vec<u8>,
        full: bool,
        api_port: bool,
    ) -> Reply {
        let text = "text/plain; charset=utf-8";
        if self.cfg.api.own_listener != api_port {
            return Reply::Respond(http::response(404, text, b"not found\n", false));
        }
        let insecure = self.cfg.api.insecure;
        if !insecure && !self.auth.api_key_configured() {
            return Reply::Respond(http::response(
                404,
                text,
                b"the server API is off on this node (see --api-key)\n",
                false,
            ));
        }
        if !insecure && !self.auth.api_key_matches(head.api_key.as_deref()) {
            add(&self.api.unauthorized, 1);
            return Reply::Respond(http::response(
                401,
                text,
                b"unauthorized: a missing or wrong X-API-Key\n",
                false,
            ));
        }
        if !self
            .auth
            .api_origin_allowed(head.origin.as_deref(), head.host.as_deref())
        {
            add(&self.stats.origin_refused, 1);
            return Reply::Respond(http::response(
                403,
                text,
                b"forbidden: this Origin may not call the server API (see --allowed-origins)\n",
                false,
            ));
        }
        if head.content_length > self.cfg.api.max_body {
            add(&self.api.too_large, 1);
            let body = format!(
                "request body larger than --api-max-body ({} bytes)\n",
                self.cfg.api.max_body
            );
            return Reply::Respond(http::response(413, text, body.as_bytes(), false));
        }
        if self.is_stopped() {
            return Reply::Respond(http::response(503, text, b"shutting down\n", false));
        }
        buf.drain(..head.head_len.min(buf.len()));
        Reply::Api(ApiRequest {
            head,
            buf,
            full,
            api_port,
        })
    }

    /// How long a runtime waits on an [`ApiPending`] before it answers
    /// with what it has: the broker's own timeout, twice, and a second.
    pub fn api_wait(&self) -> Duration {
        self.cfg.hub.ping_timeout * 2 + Duration::from_secs(1)
    }

    /// Serves a request whose body was read whole.
    pub fn api(&self, mut req: ApiRequest, now: Duration) -> ApiCall {
        let len = (req.head.content_length as usize).min(req.buf.len());
        let leftover = req.buf.split_off(len);
        let body = req.buf;
        let method = ApiMethod::from_name(&req.head.method);
        let mut meta = Meta {
            method,
            started: now,
            keep_alive: req.head.keep_alive,
            transport_errors: req.head.transport_errors,
            leftover,
            full: req.full,
            api_port: req.api_port,
            broadcast: false,
        };
        let parsed = match method {
            None => Err(ApiError::METHOD_NOT_FOUND),
            Some(m) => a::parse_method(m, &body),
        };
        let request = match parsed {
            Ok(r) => r,
            Err(e) => return ApiCall::Ready(ApiAnswer { meta, body: Err(e) }),
        };
        match request {
            a::ApiRequest::Publish(p) => {
                let slot = Slot::new(1);
                self.api_publish(&p, &slot, 0, now);
                self.settle(meta, slot)
            }
            a::ApiRequest::Broadcast {
                channels,
                data,
                idempotency_key,
                skip_history,
            } => {
                meta.broadcast = true;
                let slot = Slot::new(channels.len());
                for (i, channel) in channels.into_iter().enumerate() {
                    let p = a::Publish {
                        channel,
                        data,
                        idempotency_key: idempotency_key.clone(),
                        skip_history,
                    };
                    self.api_publish(&p, &slot, i, now);
                }
                self.settle(meta, slot)
            }
            a::ApiRequest::History {
                channel,
                limit,
                since,
                reverse,
            } => {
                let slot = Slot::new(1);
                self.api_history(&channel, limit, since, reverse, &slot, now);
                self.settle(meta, slot)
            }
            a::ApiRequest::HistoryRemove { channel } => {
                let slot = Slot::new(1);
                self.api_history_remove(&channel, &slot, now);
                self.settle(meta, slot)
            }
            a::ApiRequest::Channels { pattern } if self.announces() => {
                let slot = Slot::new(1);
                let pattern = pattern.map(|p| p.into_owned());
                let call = self.nodes_call();
                self.api_broker(call, false, &slot, 0, WaitKind::Channels { pattern });
                self.settle(meta, slot)
            }
            a::ApiRequest::Info if self.announces() => {
                let slot = Slot::new(1);
                let call = self.nodes_call();
                self.api_broker(call, false, &slot, 0, WaitKind::Info);
                self.settle(meta, slot)
            }
            a::ApiRequest::Channels { pattern } => {
                let body = Ok(self.api_channels(pattern.as_deref()));
                ApiCall::Ready(ApiAnswer { meta, body })
            }
            a::ApiRequest::Info => {
                let (clients, rooms) = self.inspect(|h| (h.connections(), h.rooms()));
                let version = env!("CARGO_PKG_VERSION");
                let body = Ok(a::info_result(&[a::NodeInfo {
                    uid: &self.cfg.node_id,
                    name: &self.cfg.node_id,
                    version,
                    num_clients: clients,
                    num_channels: rooms,
                    uptime: now.saturating_sub(self.started).as_secs(),
                }]));
                ApiCall::Ready(ApiAnswer { meta, body })
            }
            a::ApiRequest::Presence { channel } => {
                let slot = Slot::new(1);
                self.api_presence(&channel, false, &slot);
                self.settle(meta, slot)
            }
            a::ApiRequest::PresenceStats { channel } => {
                let slot = Slot::new(1);
                self.api_presence(&channel, true, &slot);
                self.settle(meta, slot)
            }
            a::ApiRequest::Subscribe {
                user,
                channel,
                client,
            } => {
                let c = Control::Subscribe {
                    user: user.into_owned(),
                    channel: channel.into_owned(),
                    client: client.map(|c| c.into_owned()),
                };
                self.api_control(meta, c)
            }
            a::ApiRequest::Unsubscribe {
                user,
                channel,
                client,
            } => {
                let c = Control::Unsubscribe {
                    user: user.into_owned(),
                    channel: channel.into_owned(),
                    client: client.map(|c| c.into_owned()),
                };
                self.api_control(meta, c)
            }
            a::ApiRequest::Disconnect {
                user,
                client,
                code,
                reason,
            } => {
                let code = code.unwrap_or(DISCONNECT_CODE);
                let reason = reason.map_or(DISCONNECT_REASON.into(), |r| r.into_owned());
                if !(3000..=4999).contains(&code) {
                    let e = ApiError::bad_request(
                        "bad request: disconnect.code must be from 3000 to 4999",
                    );
                    return ApiCall::Ready(ApiAnswer { meta, body: Err(e) });
                }
                if reason.len() > MAX_CLOSE_REASON {
                    let e = ApiError::bad_request(format!(
                        "bad request: disconnect.reason longer than {MAX_CLOSE_REASON} bytes"
                    ));
                    return ApiCall::Ready(ApiAnswer { meta, body: Err(e) });
                }
                let c = Control::Disconnect {
                    user: user.into_owned(),
                    client: client.map(|c| c.into_owned()),
                    code: code as u16,
                    reason,
                };
                self.api_control(meta, c)
            }
        }
    }

    /// A server-side command: applied here (embedded), or published on
    /// the control channel for every node (Redis; not held while the link
    /// is down: at most once).
    fn api_control(&self, meta: Meta, c: Control) -> ApiCall {
        if let Control::Subscribe { channel, .. } | Control::Unsubscribe { channel, .. } = &c {
            let checked = self.api_channel(channel).and_then(|()| {
                crate::codec::seed::check_room(channel, &self.cfg.hub.limits)
                    .map_err(|_| ApiError::bad_request("bad request: not a valid channel name"))
            });
            if let Err(e) = checked {
                return ApiCall::Ready(ApiAnswer { meta, body: Err(e) });
            }
        }
        let slot = Slot::new(1);
        match self.cfg.mode {
            BrokerMode::Local => {
                self.apply_control(&c);
                slot.fill(0, Ok("{}".into()));
            }
            BrokerMode::Remote => {
                let call = Call::publish(&self.control_channel, c.encode());
                self.api_broker(call, false, &slot, 0, WaitKind::PublishPlain);
            }
        }
        self.settle(meta, slot)
    }

    /// Ready if every part is in, else pending.
    fn settle(&self, meta: Meta, slot: Arc<Slot>) -> ApiCall {
        let pending = ApiPending { meta, slot };
        if lock(&pending.slot.0).left == 0 {
            ApiCall::Ready(pending.finish())
        } else {
            ApiCall::Pending(pending)
        }
    }

    /// The HTTP response to an answer, and, when the connection goes on
    /// (keep-alive, under `served` requests of the bound), the reader of
    /// its next request.
    pub fn api_respond(
        &self,
        answer: ApiAnswer,
        served: u32,
        now: Duration,
    ) -> (Vec<u8>, Option<Admitted>) {
        let ApiAnswer { meta, body } = answer;
        let m = meta.method.map_or(METHODS - 1, ApiMethod::index);
        let code = body.as_ref().err().map_or(0, |e| e.code);
        let r = RESULT_CODES.iter().position(|c| *c == code).unwrap_or(1);
        add(&self.api.requests[m][r], 1);
        let took = now.saturating_sub(meta.started);
        let b = LATENCY_BUCKETS
            .iter()
            .position(|b| took.as_secs_f64() <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        add(&self.api.latency[m][b], 1);
        add(&self.api.latency_micros[m], took.as_micros() as u64);
        let http_errors = self.cfg.api.http_errors || meta.transport_errors;
        let (status, text) = match &body {
            Ok(result) => (200, a::encode_result(result)),
            Err(e) => (if http_errors { e.status } else { 200 }, e.encode()),
        };
        let keep =
            meta.keep_alive && served < self.cfg.api.max_requests_per_conn && !self.is_stopped();
        let response = http::api_response(status, text.as_bytes(), keep);
        let next = keep.then(|| Admitted {
            head: HeadReader::resume(self.cfg.serve_index, meta.leftover),
            full: meta.full,
            api_port: meta.api_port,
        });
        (response, next)
    }

    /// The numbers of the API's metrics.
    pub(super) fn api_metrics(&self) -> ApiMetrics {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut methods: Vec<&'static str> = ApiMethod::LABELS.to_vec();
        methods.push("unknown");
        ApiMetrics {
            methods,
            results: RESULT_LABELS.to_vec(),
            requests: self
                .api
                .requests
                .iter()
                .map(|row| row.iter().map(load).collect())
                .collect(),
            buckets: LATENCY_BUCKETS.to_vec(),
            latency: self
                .api
                .latency
                .iter()
                .map(|row| row.iter().map(load).collect())
                .collect(),
            latency_sum_seconds: self
                .api
                .latency_micros
                .iter()
                .map(|c| load(c) as f64 / 1e6)
                .collect(),
            unauthorized: load(&self.api.unauthorized),
            too_large: load(&self.api.too_large),
        }
    }

    /// A channel the API may act on: its length, its namespace.
    fn api_channel(&self, channel: &str) -> Result<(), ApiError> {
        if channel.len() > self.cfg.hub.limits.max_room_bytes {
            return Err(ApiError::bad_request(format!(
                "bad request: channel longer than {} bytes",
                self.cfg.hub.limits.max_room_bytes
            )));
        }
        self.auth
            .policy()
            .resolve(channel)
            .map(|_| ())
            .map_err(|_| ApiError::UNKNOWN_CHANNEL)
    }

    /// Queues a broker request whose answer fills `part` of `slot`:
    /// `publish` (a publish, so held while Redis is away) or a read.
    fn api_broker(&self, call: Call, publish: bool, slot: &Arc<Slot>, part: usize, kind: WaitKind) {
        let ticket = self.ticket();
        let wait = ApiWait {
            slot: slot.clone(),
            part,
            kind,
        };
        let queued = self.with(|s| {
            let ok = if publish {
                !matches!(
                    s.hub.broker_mut().publish(Outbound {
                        call,
                        ticket: Some(ticket),
                    }),
                    Queued::Dropped
                )
            } else {
                s.hub.broker_mut().query(ticket, call)
            };
            if ok {
                lock(&self.waiters).insert(ticket, Waiter::Api(Box::new(wait)));
            }
            ok
        });
        if !queued {
            slot.fill(
                part,
                Err(ApiError::INTERNAL
                    .with_message("internal server error: the broker is unavailable or full")),
            );
        }
    }

    fn api_publish(&self, p: &a::Publish<'_>, slot: &Arc<Slot>, part: usize, now: Duration) {
        /// What the history script adds to a payload at most: its
        /// `,"offset":N,"epoch":"E"` (20 digits, a 12-character epoch).
        const POSITION_BYTES: usize = 64;
        if let Err(e) = self.api_channel(&p.channel) {
            return slot.fill(part, Err(e));
        }
        let publication = Publication {
            room: &p.channel,
            message: message_of(p.data),
            info: None,
            position: None,
        };
        let history = if p.skip_history {
            None
        } else {
            self.history_of(&p.channel)
        };
        // The broker payload as every node will read it: over the limit,
        // every node would drop it, so it is refused here instead.
        let payload = envelope::encode(&publication);
        let limit = self.cfg.hub.limits.max_broker_payload_bytes;
        let position = if history.is_some() { POSITION_BYTES } else { 0 };
        if payload.len() + position > limit {
            return slot.fill(
                part,
                Err(ApiError::LIMIT_EXCEEDED.with_message(format!(
                    "limit exceeded: the publication is larger than the broker payload limit \
                     ({limit} bytes)"
                ))),
            );
        }
        match self.cfg.mode {
            BrokerMode::Local => {
                let r = self.api_publish_local(
                    &publication,
                    p.idempotency_key.as_deref(),
                    history,
                    now,
                );
                slot.fill(
                    part,
                    r.map(|pos| a::publish_result(pos.as_ref().map(|(o, e)| (*o, &**e)))),
                );
            }
            BrokerMode::Remote => {
                let prefix = &self.cfg.hub.channel_prefix;
                let channel = envelope::channel_for(prefix, &p.channel);
                let key = p.idempotency_key.as_deref();
                let ttl = IDEMPOTENCY_TTL.as_secs().to_string();
                match (history, key) {
                    (Some(o), _) => {
                        let keys = HistoryKeys::new(prefix, &p.channel);
                        let result = HistoryKeys::result(prefix, &p.channel, key.unwrap_or(""));
                        let mut payload = payload;
                        payload.pop();
                        let call = Call::script(
                            &r::PUBLISH_SCRIPT,
                            &[&keys.stream, &keys.meta, &result],
                            vec![
                                Bytes::from(payload),
                                Bytes::from(o.size.to_string()),
                                Bytes::from(o.ttl.as_secs().max(1).to_string()),
                                Bytes::from(channel),
                                Bytes::from(o.meta_ttl.as_secs().to_string()),
                                Bytes::from(self.new_epoch()),
                                Bytes::from(if key.is_some() { ttl } else { "0".into() }),
                            ],
                        );
                        self.api_broker(call, true, slot, part, WaitKind::PublishHistory);
                    }
                    (None, Some(key)) => {
                        let result = HistoryKeys::result(prefix, &p.channel, key);
                        let call = Call::script(
                            &r::PUBLISH_ONCE_SCRIPT,
                            &[&result],
                            vec![Bytes::from(channel), Bytes::from(payload), Bytes::from(ttl)],
                        );
                        self.api_broker(call, true, slot, part, WaitKind::PublishPlain);
                    }
                    (None, None) => {
                        let call = Call::publish(&channel, Bytes::from(payload));
                        self.api_broker(call, true, slot, part, WaitKind::PublishPlain);
                    }
                }
            }
        }
    }

    /// A publish on the embedded broker: delivered now; with a key, once
    /// per [`IDEMPOTENCY_TTL`] (a retry answers the first result).
    fn api_publish_local(
        &self,
        p: &Publication<'_>,
        key: Option<&str>,
        history: Option<HistoryOpts>,
        now: Duration,
    ) -> Result<Option<(u64, Box<str>)>, ApiError> {
        let publish = || match &history {
            Some(o) => {
                let (offset, epoch) = self.append_local(p, o, now);
                Some((offset, epoch))
            }
            None => {
                if let Some(members) = self.inspect(|h| h.members(p.room)) {
                    let mut wakes = Vec::new();
                    self.deliver(p, &members, &mut wakes);
                    wakes.into_iter().for_each(Waker::wake);
                }
                None
            }
        };
        let Some(key) = key else {
            return Ok(publish());
        };
        let mut idem = lock(&self.api.idem);
        idem.expire(now);
        let k: IdemKey = (p.room.into(), key.into());
        if let Some(r) = idem.results.get(&k) {
            return Ok(r.clone());
        }
        if idem.results.len() >= MAX_IDEMPOTENCY_KEYS {
            return Err(ApiError::LIMIT_EXCEEDED
                .with_message("limit exceeded: too many idempotency keys in the last 5 minutes"));
        }
        let r = publish();
        idem.order
            .push_back((now + IDEMPOTENCY_TTL, k.0.clone(), k.1.clone()));
        idem.results.insert(k, r.clone());
        Ok(r)
    }

    fn api_history(
        &self,
        channel: &str,
        limit: Option<i32>,
        since: Option<a::Since<'_>>,
        reverse: bool,
        slot: &Arc<Slot>,
        now: Duration,
    ) {
        if let Err(e) = self.api_channel(channel) {
            return slot.fill(0, Err(e));
        }
        let Some(o) = self.history_of(channel) else {
            return slot.fill(
                0,
                Err(ApiError::NOT_AVAILABLE
                    .with_message("not available: the channel keeps no history")),
            );
        };
        let cap = self.cfg.history_max_publications as u64;
        let limit = match limit {
            None | Some(0) => 0,
            Some(n) if n < 0 => cap,
            Some(n) => (n as u64).min(cap),
        };
        let since = since.map(|s| StreamPos {
            offset: s.offset,
            epoch: s.epoch.as_ref().into(),
        });
        let from = since.as_ref().map_or(0, |s| s.offset);
        match self.cfg.mode {
            BrokerMode::Local => {
                let stream = self.memory.stream(channel, || self.new_epoch());
                let mut s = lock(&stream);
                let entries = s.read(from, limit as usize, reverse, now);
                let read = Read {
                    top: s.top,
                    epoch: s.epoch.to_string(),
                    entries,
                };
                drop(s);
                slot.fill(0, history_answer(since.as_ref(), read));
            }
            BrokerMode::Remote => {
                let call = self.history_call(channel, from, limit, reverse, &o);
                self.api_broker(call, false, slot, 0, WaitKind::History { since });
            }
        }
    }

    fn api_history_remove(&self, channel: &str, slot: &Arc<Slot>, now: Duration) {
        if let Err(e) = self.api_channel(channel) {
            return slot.fill(0, Err(e));
        }
        if self.history_of(channel).is_none() {
            return slot.fill(
                0,
                Err(ApiError::NOT_AVAILABLE
                    .with_message("not available: the channel keeps no history")),
            );
        }
        match self.cfg.mode {
            BrokerMode::Local => {
                let stream = self.memory.stream(channel, || self.new_epoch());
                let mut s = lock(&stream);
                // Expired entries first, so the clear is of what is there.
                let _ = s.read(0, 0, false, now);
                s.clear();
                drop(s);
                slot.fill(0, Ok("{}".into()));
            }
            BrokerMode::Remote => {
                let keys = HistoryKeys::new(&self.cfg.hub.channel_prefix, channel);
                self.api_broker(
                    r::history_remove(&keys),
                    false,
                    slot,
                    0,
                    WaitKind::HistoryRemove,
                );
            }
        }
    }

    /// `presence` (`stats: false`) or `presence_stats` of a channel: the
    /// node's book (embedded), or the room's presence in Redis.
    fn api_presence(&self, channel: &str, stats: bool, slot: &Arc<Slot>) {
        if let Err(e) = self.api_channel(channel) {
            return slot.fill(0, Err(e));
        }
        if self.presence_of(channel).is_none() {
            return slot.fill(
                0,
                Err(ApiError::NOT_AVAILABLE
                    .with_message("not available: the channel has no presence")),
            );
        }
        match self.cfg.mode {
            BrokerMode::Local => {
                let entries = self.local_presence(channel);
                slot.fill(0, Ok(presence_answer(stats, &entries)));
            }
            BrokerMode::Remote => {
                let keys = r::PresenceKeys::new(&self.cfg.hub.channel_prefix, channel);
                let call = Call::script(
                    &r::PRESENCE_GET_SCRIPT,
                    &[&keys.data, &keys.expiry],
                    Vec::new(),
                );
                self.api_broker(call, false, slot, 0, WaitKind::Presence { stats });
            }
        }
    }

    /// This node's rooms with their local member counts, sorted, those
    /// matching `pattern` if given.
    fn api_channels(&self, pattern: Option<&str>) -> String {
        let pattern: Option<Vec<char>> = pattern.map(|p| p.chars().collect());
        let mut rooms: Vec<(String, usize)> = self.inspect(|h| {
            h.room_names()
                .filter(|r| {
                    pattern
                        .as_ref()
                        .is_none_or(|p| glob(p, &r.chars().collect::<Vec<_>>()))
                })
                .map(|r| (r.to_string(), h.members(r).map_or(0, |m| m.len())))
                .collect()
        });
        rooms.sort();
        a::channels_result(rooms.iter().map(|(r, n)| (r.as_str(), *n)))
    }

    /// A broker answer for an API request (`None`: it failed).
    pub(super) fn api_broker_reply(&self, w: ApiWait, reply: Option<RedisReply>) {
        let reply = reply.filter(|r| !matches!(r, RedisReply::Error(_)));
        let failed = || {
            Err(ApiError::INTERNAL.with_message("internal server error: the broker request failed"))
        };
        let r = match (w.kind, reply) {
            (_, None) => failed(),
            (WaitKind::PublishHistory, Some(reply)) => {
                let parts = reply.as_array().unwrap_or(&[]);
                let offset = parts.first().and_then(RedisReply::as_int);
                let epoch = parts.get(1).and_then(RedisReply::as_str);
                match (offset, epoch) {
                    (Some(o), Some(e)) if o >= 0 => Ok(a::publish_result(Some((o as u64, e)))),
                    _ => failed(),
                }
            }
            (WaitKind::PublishPlain, Some(_)) | (WaitKind::HistoryRemove, Some(_)) => {
                Ok("{}".into())
            }
            (WaitKind::Info, Some(reply)) => self.fleet_info(&reply),
            (WaitKind::Channels { pattern }, Some(reply)) => {
                self.fleet_channels(&reply, pattern.as_deref())
            }
            (WaitKind::Presence { stats }, Some(reply)) => {
                match super::presence::parse_entries(&reply) {
                    Some(entries) => Ok(presence_answer(stats, &entries)),
                    None => failed(),
                }
            }
            (WaitKind::History { since }, Some(reply)) => {
                match super::history::parse_read(&reply) {
                    Some(read) => history_answer(since.as_ref(), read),
                    None => failed(),
                }
            }
        };
        w.slot.fill(w.part, r);
    }
}

/// A presence or presence-stats result from client → info pairs.
fn presence_answer(stats: bool, entries: &[(String, String)]) -> String {
    if stats {
        let users = super::presence::count_users(entries.iter().map(|(_, i)| i.as_str()));
        a::presence_stats_result(entries.len(), users)
    } else {
        let mut sorted: Vec<&(String, String)> = entries.iter().collect();
        sorted.sort();
        a::presence_result(sorted.into_iter().map(|(c, i)| (c.as_str(), i.as_str())))
    }
}

/// A history result, or 112 when `since` names another epoch.
fn history_answer(since: Option<&StreamPos>, read: Read<Bytes>) -> Result<String, ApiError> {
    if let Some(since) = since
        && !since.epoch.is_empty()
        && *since.epoch != *read.epoch
    {
        return Err(ApiError::UNRECOVERABLE_POSITION);
    }
    let payloads: Vec<Bytes> = read.entries.into_iter().map(|(_, p)| p).collect();
    let raw = super::history::publications_json(&payloads);
    Ok(a::history_result(&raw, &read.epoch, read.top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str, s: &str| {
            glob(
                &p.chars().collect::<Vec<_>>(),
                &s.chars().collect::<Vec<_>>(),
            )
        };
        assert!(g("*", ""));
        assert!(g("chat:*", "chat:1"));
        assert!(!g("chat:*", "news:1"));
        assert!(g("c?at:*1", "chat:xx1"));
        assert!(g("*a*b", "xaxxb"));
        assert!(!g("*a*b", "xaxxbc"));
        assert!(!g("Chat", "chat"));
    }
}
