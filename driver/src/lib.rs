//! roomcast's driver: everything a runtime does around `roomcast-core`'s
//! [`Node`], written once. It moves bytes and keeps time — sockets, the
//! WebSocket layer (async-tungstenite over `futures-io`), Redis (redis-rs)
//! — and decides nothing: admission, answers, closes, keepalives, what to
//! send Redis and when the link is up are the node's.
//!
//! A runtime crate implements [`Runtime`] (spawn, timers, the clock, a
//! yield, its TCP types) in the shape of quinn's runtime trait, and keeps
//! only that, its executor setup, its signals and its `main`. Both runtimes
//! therefore behave the same by construction: the same loops, the same
//! fixed polling order where futures race ([`race`]), the same yields.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake as EndedEarly;
use async_tungstenite::tungstenite::protocol::frame::Frame;
use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::{AsyncReadExt, AsyncWriteExt, FutureExt, SinkExt, StreamExt};
use roomcast_core::auth::{Auth, Pattern};
use roomcast_core::codec::redis::{Call, Reply as RedisReply, SCRIPTS};
use roomcast_core::hub::Ticket;
use roomcast_core::node::{Admitted, Taken};
use roomcast_core::settings::{self, Settings};
use roomcast_core::{
    ABORT_CLOSE_WAIT, ACCEPT_BACKOFF, BROKER_STOP_WAIT, BrokerOp, Finish, Inbound, Node, Outgoing,
    Reply, Session,
};
use tracing::{debug, info, warn};

pub use roomcast_core::cli::Cli;

/// What the driver needs of an async runtime.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// A connected TCP stream, as `futures-io` streams. Closing it
    /// (`poll_close`) must end the write side (FIN).
    type Tcp: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A listening socket.
    type Listener: Send + Sync + 'static;

    /// Runs a task in the background.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);
    /// Resolves once [`Runtime::now`] reaches `deadline`.
    fn sleep_until(&self, deadline: Duration) -> impl Future<Output = ()> + Send + 'static;
    /// Time since this runtime handle was made: the node's clock.
    fn now(&self) -> Duration;
    /// Lets the executor run other tasks.
    fn yield_now(&self) -> impl Future<Output = ()> + Send;
    /// Takes a `std` listener (already bound, with its backlog).
    fn listener(&self, l: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Accepts the next connection.
    fn accept(&self, l: &Self::Listener) -> impl Future<Output = io::Result<Self::Tcp>> + Send;
    /// The socket under a stream, for socket options.
    fn socket(tcp: &Self::Tcp) -> socket2::SockRef<'_>;
}

/// Polls several futures in a fixed order, first ready wins: unlike a
/// random `select!`, the same on every runtime.
pub async fn race<T>(futures: &mut [Pin<&mut (dyn Future<Output = T> + Send)>]) -> T {
    poll_fn(|cx| {
        for f in futures.iter_mut() {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
        }
        Poll::Pending
    })
    .await
}

/// `f`, or `None` if it has not finished by `deadline`.
pub async fn until<R: Runtime, T: Send>(
    rt: &R,
    deadline: Duration,
    f: impl Future<Output = T> + Send,
) -> Option<T> {
    let f = pin!(async { Some(f.await) });
    let t = pin!(async {
        rt.sleep_until(deadline).await;
        None
    });
    race(&mut [f, t]).await
}

/// `f`, or `None` if it has not finished after `d`.
pub async fn timeout<R: Runtime, T: Send>(
    rt: &R,
    d: Duration,
    f: impl Future<Output = T> + Send,
) -> Option<T> {
    until(rt, rt.now() + d, f).await
}

/// How many items a loop handles before yielding: an executor without a
/// cooperative budget (smol) would otherwise let one busy socket starve the
/// other half of its own connection task.
const YIELD_EVERY: u32 = 16;

/// The same for the task that takes messages from Redis: it runs alone, so
/// it may hand over more, which lets each writer find more frames per write.
const BROKER_YIELD_EVERY: u32 = 128;

/// The WebSocket settings for these limits ([`Cli::ws_buffers`]).
pub fn ws_config(cli: &Cli) -> WebSocketConfig {
    let b = cli.ws_buffers();
    WebSocketConfig::default()
        .read_buffer_size(b.read)
        .write_buffer_size(b.write)
        .max_write_buffer_size(b.max_write)
        .max_message_size(Some(b.max_frame))
        .max_frame_size(Some(b.max_frame))
}

/// Binds a listening socket with a backlog for bursts of connects (the
/// std default of 128 overflows under a few hundred at once).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Opens `--redis` with redis-rs, which has the last word on the URL (the
/// flag check is structural): a URL it refuses is an `InvalidInput` error
/// before anything is served.
pub fn redis_client(cli: &Cli) -> io::Result<Option<redis::Client>> {
    let open = |url: &String| {
        redis::Client::open(url.as_str()).map_err(|e| {
            let url = roomcast_core::cli::redact(url);
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid Redis URL {url:?}: {e}"),
            )
        })
    };
    cli.redis.as_ref().map(open).transpose()
}

/// This process's soft limit on open files, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Everything a node's tasks share.
struct Shared<R: Runtime> {
    rt: R,
    node: Node,
    cli: Cli,
    ws_config: WebSocketConfig,
}

/// Checks the flags and opens what must open before serving: the Redis URL
/// (redis-rs's parser), the limits' consistency, the config file's auth
/// part and the token keys.
pub fn check(cli: &Cli) -> io::Result<Option<redis::Client>> {
    cli.check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let auth = load_auth(cli)?;
    if cli.admin && !cli.api_insecure && !auth.api_key_configured() {
        return Err(invalid(
            "--admin needs the server API on: give it a key (--api-key-file, --api-key \
             or api_key in the config file), or --api-insecure on a loopback --api-listen",
        ));
    }
    redis_client(cli)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// Who may connect, join and publish: the config file's auth settings
/// (`--config`), overridden by the flags; key files read here.
pub fn load_auth(cli: &Cli) -> io::Result<Arc<Auth>> {
    let settings = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("{path}: cannot read the config file: {e}")))?;
            settings::parse(path, &text).map_err(invalid)?
        }
        None => Settings::empty(""),
    };
    let mut settings = settings;
    let base = cli
        .config
        .as_deref()
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()));
    let a = &mut settings.auth;
    // A relative key path in the file is relative to the file.
    if let (Some(key), Some(dir)) = (&a.token_public_key, &base)
        && std::path::Path::new(key).is_relative()
    {
        a.token_public_key = Some(dir.join(key).to_string_lossy().into_owned());
    }
    if let Some(secret) = &cli.token_hmac_secret {
        a.token_hmac_secret = Some(secret.clone());
    }
    if let Some(file) = &cli.token_hmac_secret_file {
        let secret = std::fs::read_to_string(file)
            .map_err(|e| invalid(format!("--token-hmac-secret-file {file}: {e}")))?;
        a.token_hmac_secret = Some(secret.trim_end_matches(['\r', '\n']).to_string());
    }
    if let Some(key) = &cli.token_public_key {
        a.token_public_key = Some(key.clone());
    }
    if let Some(aud) = &cli.token_audience {
        a.token_audience = Some(aud.clone());
    }
    if let Some(iss) = &cli.token_issuer {
        a.token_issuer = Some(iss.clone());
    }
    if let Some(grace) = cli.token_expire_grace {
        a.token_expire_grace = grace;
    }
    if let Some(key) = &cli.api_key {
        a.api_key = Some(key.clone());
    }
    if let Some(file) = &cli.api_key_file {
        let key = std::fs::read_to_string(file)
            .map_err(|e| invalid(format!("--api-key-file {file}: {e}")))?;
        let key = key.trim_end_matches(['\r', '\n']);
        if key.is_empty() {
            return Err(invalid(format!("--api-key-file {file}: the file is empty")));
        }
        a.api_key = Some(key.to_string());
    }
    if cli.allow_anonymous_connect_without_token {
        a.allow_anonymous_connect_without_token = true;
    }
    if !cli.allowed_origins.is_empty() {
        a.allowed_origins = cli
            .allowed_origins
            .iter()
            .map(|p| Pattern::new(p.trim()))
            .collect();
    }
    let key_path = a.token_public_key.clone();
    let pem = match &key_path {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            if cli.token_public_key.is_some() {
                invalid(format!("--token-public-key {path}: {e}"))
            } else {
                invalid(settings.unreadable_public_key(&e))
            }
        })?),
        None => None,
    };
    let auth = match &cli.config {
        Some(_) => settings.build_auth(pem.as_deref()).map_err(invalid)?,
        None => Auth::new(&settings.auth, pem.as_deref())
            .map_err(|e| invalid(format!("token keys: {e}")))?,
    };
    Ok(Arc::new(auth))
}

/// Seconds since the Unix epoch now: the node's wall-clock origin.
fn wall_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves on `listener` until `shutdown` resolves, then closes every client
/// ("going away"), waits up to `--shutdown-grace` for their close
/// handshakes, lets the broker finish what is queued and returns.
pub async fn serve<R: Runtime>(
    rt: R,
    cli: Cli,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let redis = check(&cli)?;
    let listener = rt.listener(listener)?;
    // The server API's own listener, when asked for.
    let api_listener = match cli.api_listen {
        Some(addr) => {
            let l = bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("--api-listen {addr}: {e}")))?;
            info!("server API listening on http://{}", l.local_addr()?);
            Some(rt.listener(l)?)
        }
        None => None,
    };
    // Per-process entropy, so that a fleet's nodes do not retry in step and
    // have distinct names.
    let seed = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        (std::process::id(), rt.now()),
    );
    let mut cfg = cli.node_config(open_files_limit(), seed);
    let auth = load_auth(&cli)?;
    let now = rt.now();
    cfg.wall_origin = wall_clock().saturating_sub(now.as_secs());
    if auth.is_open() && cli.config.is_some() {
        info!("open mode: the config file sets no token key and no namespace");
    } else if !auth.is_open() {
        info!("auth configured: default deny, the namespaces grant");
    }
    let shared = Arc::new(Shared {
        node: Node::with_auth(cfg, auth, now),
        ws_config: ws_config(&cli),
        cli,
        rt: rt.clone(),
    });
    let (broker, broker_done) = match redis {
        Some(client) => {
            let (task, done) = broker_task(shared.clone(), client).remote_handle();
            rt.spawn(task);
            (true, Some(done))
        }
        None => (false, None),
    };
    let (timer, _timer_handle) = timer_task(shared.clone()).remote_handle();
    rt.spawn(timer);
    debug!(broker, "serving");

    let mut shutdown = pin!(shutdown.fuse());
    loop {
        let accepted = {
            let stop = pin!(async {
                shutdown.as_mut().await;
                None
            });
            let accept = pin!(async { Some((false, rt.accept(&listener).await)) });
            let api = pin!(async {
                match &api_listener {
                    Some(l) => Some((true, rt.accept(l).await)),
                    None => std::future::pending().await,
                }
            });
            race(&mut [stop, accept, api]).await
        };
        match accepted {
            None => break,
            Some((api, Ok(stream))) => {
                // Refused over the limit (and the operator reserve): dropped here.
                let admitted = if api {
                    shared.node.admit_api()
                } else {
                    shared.node.admit()
                };
                if let Some(admitted) = admitted {
                    let guard = SocketGuard(shared.clone());
                    rt.spawn(handle_socket(guard, stream, admitted));
                }
                rt.yield_now().await;
            }
            Some((_, Err(e))) => {
                // Out of file descriptors and the like: back off briefly,
                // and log at most once a second.
                if let Some(line) = shared.node.accept_failed(&e.to_string(), rt.now()) {
                    warn!("{line}");
                }
                rt.sleep_until(rt.now() + ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    drop(api_listener);
    info!("shutting down: closing every connection");
    shared.node.shutdown();
    let drained = poll_fn(|cx| shared.node.poll_drained(cx));
    let _ = timeout(&rt, shared.cli.drain_wait(), drained).await;
    if let Some(done) = broker_done {
        // What is queued goes out unless Redis hangs (dropping the handle
        // cancels the task).
        let _ = timeout(&rt, BROKER_STOP_WAIT, done).await;
    }
    info!("stopped");
    Ok(())
}

/// Reports the socket's end to the node however its task ends, even if it
/// is dropped before it first runs: made at admission, moved into the task.
struct SocketGuard<R: Runtime>(Arc<Shared<R>>);

impl<R: Runtime> Drop for SocketGuard<R> {
    fn drop(&mut self) {
        self.0.node.socket_closed();
    }
}

async fn handle_socket<R: Runtime>(
    guard: SocketGuard<R>,
    mut stream: R::Tcp,
    mut admitted: Admitted,
) {
    let shared = guard.0.clone();
    let rt = &shared.rt;
    let _ = R::socket(&stream).set_tcp_nodelay(true);
    // Server API requests keep the connection for the next one (each
    // with the handshake's limits and timeout); anything else ends it.
    let mut served = 0u32;
    let mut deadline;
    let reply = loop {
        deadline = rt.now() + shared.cli.handshake_timeout;
        if !admitted.head.is_decided() {
            let read = async {
                while let Ok(n) = stream.read(admitted.head.buf()).await {
                    if admitted.head.advance(n) {
                        break;
                    }
                }
            };
            let _ = until(rt, deadline, read).await;
        }
        match shared.node.answer(admitted, rt.now()) {
            Reply::Api(req) => {
                served += 1;
                match serve_api(&shared, &mut stream, req, served, deadline).await {
                    Some(next) => admitted = next,
                    None => {
                        let _ = until(rt, rt.now() + shared.cli.handshake_timeout, stream.close())
                            .await;
                        drop(guard);
                        return;
                    }
                }
            }
            other => break other,
        }
    };
    match reply {
        Reply::Api(_) => unreachable!("served in the loop"),
        Reply::Upgrade {
            response,
            rest,
            protocol,
            claims,
        } => {
            let written = until(rt, deadline, stream.write_all(&response)).await;
            drop(response);
            if !matches!(written, Some(Ok(()))) {
                shared.node.handshake_failed();
                return;
            }
            let ws = WebSocketStream::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(shared.ws_config),
            )
            .await;
            // The connection lives in a task of its own: this one, whose
            // state is sized for the handshake, ends here.
            // Split here: an async fn keeps its arguments for its whole life.
            let (tx, rx) = ws.split();
            // Opened here, so the task keeps the connection's handle and not
            // the upgrade's claims (an async fn keeps its arguments).
            let conn = shared.node.open(protocol, claims, rt.now());
            rt.spawn(async move {
                run_connection(&guard.0, tx, rx, conn).await;
                drop(guard);
            });
            return;
        }
        Reply::Respond(response) => {
            let _ = until(rt, deadline, async {
                stream.write_all(&response).await?;
                stream.close().await
            })
            .await;
        }
        Reply::Drop => {}
    }
    drop(guard);
}

/// One server API request: its body read by `deadline`, answered (waiting
/// for the broker at most [`Node::api_wait`]), the response written. The
/// connection's next request, if it goes on.
async fn serve_api<R: Runtime>(
    shared: &Arc<Shared<R>>,
    stream: &mut R::Tcp,
    mut req: roomcast_core::node::ApiRequest,
    served: u32,
    deadline: Duration,
) -> Option<Admitted> {
    let rt = &shared.rt;
    let node = &shared.node;
    let body = async {
        let mut chunk = vec![0u8; 16 * 1024];
        while req.missing() > 0 {
            let want = req.missing().min(chunk.len());
            match stream.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => req.extend(&chunk[..n]),
            }
        }
        true
    };
    if until(rt, deadline, body).await != Some(true) {
        node.handshake_failed();
        return None;
    }
    let answer = match node.api(req, rt.now()) {
        roomcast_core::node::ApiCall::Ready(a) => a,
        roomcast_core::node::ApiCall::Pending(p) => {
            let _ = timeout(rt, node.api_wait(), poll_fn(|cx| p.poll(cx))).await;
            p.finish()
        }
    };
    let (response, next) = node.api_respond(answer, served, rt.now());
    let written = until(
        rt,
        rt.now() + shared.cli.handshake_timeout,
        stream.write_all(&response),
    )
    .await;
    if !matches!(written, Some(Ok(()))) {
        return None;
    }
    next
}

type Ws<R> = WebSocketStream<<R as Runtime>::Tcp>;
type WsSender<R> = async_tungstenite::WebSocketSender<<R as Runtime>::Tcp>;
type WsReceiver<R> = async_tungstenite::WebSocketReceiver<<R as Runtime>::Tcp>;

/// Text messages larger than this are sent as fragments of this size.
pub const FRAGMENT_BYTES: usize = 16 * 1024;

/// A text message as a first fragment and its continuations (RFC 6455
/// §5.4; UTF-8 is checked over the whole message, so a fragment may end
/// inside a character). Each fragment shares the message's bytes.
fn fragments(message: Bytes) -> impl Iterator<Item = Frame> {
    let n = message.len().div_ceil(FRAGMENT_BYTES);
    (0..n).map(move |i| {
        let part = message.slice(i * FRAGMENT_BYTES..((i + 1) * FRAGMENT_BYTES).min(message.len()));
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        Frame::message(part, opcode, i + 1 == n)
    })
}

/// What the WebSocket layer read, as the node's input.
fn inbound(msg: &Result<Message, WsError>) -> Option<Inbound<'_>> {
    Some(match msg {
        Ok(Message::Text(t)) => Inbound::Text(t.as_bytes()),
        Ok(Message::Binary(_)) => Inbound::Binary,
        Ok(Message::Ping(_) | Message::Pong(_)) => Inbound::Control,
        Ok(Message::Close(_) | Message::Frame(_)) => return None,
        Err(WsError::Capacity(_)) => Inbound::TooLarge,
        Err(WsError::Utf8(_)) => Inbound::NotUtf8,
        Err(WsError::Protocol(e)) if !matches!(e, EndedEarly) => Inbound::ProtocolError,
        Err(_) => return None,
    })
}

async fn run_connection<R: Runtime>(
    shared: &Arc<Shared<R>>,
    mut tx: WsSender<R>,
    mut rx: WsReceiver<R>,
    conn: roomcast_core::Conn,
) {
    let node = &shared.node;
    let rt = &shared.rt;
    debug!(conn = %conn.id(), "open");
    let finish = {
        let reader = pin!(async {
            let mut peer_closed = false;
            let mut n = 0u32;
            loop {
                let next = match node.conn_deadline(&conn) {
                    Some(d) => until(rt, d, rx.next()).await,
                    None => Some(rx.next().await),
                };
                let Some(msg) = next else {
                    node.conn_timeout(&conn, rt.now());
                    if node.is_closing(&conn) {
                        break;
                    }
                    continue;
                };
                let Some(msg) = msg else { break };
                if matches!(msg, Ok(Message::Close(_))) {
                    peer_closed = true;
                    break;
                }
                let Some(input) = inbound(&msg) else { break };
                let more = node.frame(&conn, input, rt.now());
                for notice in node.take_notices() {
                    warn!("{notice}");
                }
                if !more {
                    break;
                }
                n += 1;
                if n.is_multiple_of(YIELD_EVERY) {
                    rt.yield_now().await;
                }
            }
            node.reading_ended(&conn, peer_closed)
        });
        let writer = pin!(async {
            loop {
                match poll_fn(|cx| node.poll_outgoing(&conn, cx)).await {
                    Outgoing::Frames(frames) => {
                        for f in frames {
                            if f.len() > FRAGMENT_BYTES {
                                // A large message goes out in fragments, so the
                                // WebSocket layer's write buffer (which keeps
                                // its largest size) stays small.
                                for fragment in fragments(f) {
                                    if let Err(e) = tx.feed(Message::Frame(fragment)).await {
                                        return write_failed(node, &conn, e).await;
                                    }
                                }
                                continue;
                            }
                            // SAFETY: the node only queues frames built from `str`.
                            let text = unsafe { Utf8Bytes::from_bytes_unchecked(f) };
                            if let Err(e) = tx.feed(Message::Text(text)).await {
                                return write_failed(node, &conn, e).await;
                            }
                        }
                        if tx.flush().await.is_err() {
                            return Finish::Release;
                        }
                    }
                    Outgoing::Ping => {
                        if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                            return Finish::Release;
                        }
                    }
                    Outgoing::Finish(finish) => return finish,
                }
            }
        });
        // A slow consumer's writer may be stuck on a full socket: this
        // fires when the node drops it, so the task never waits for that write.
        let abort = pin!(poll_fn(|cx| node.poll_abort(&conn, cx)));
        let mut reader = reader;
        let mut writer = writer;
        let first = {
            let r = pin!(async { Ok::<_, Finish>(reader.as_mut().await) });
            let w = pin!(async { Err::<Option<Finish>, _>(writer.as_mut().await) });
            let a = pin!(async { Err::<Option<Finish>, _>(abort.await) });
            race(&mut [a, r, w]).await
        };
        match first {
            Ok(Some(finish)) | Err(finish) => finish,
            // Refused: the writer sends the close, unless it is stuck.
            // (Boxed: a cold path, kept out of every live connection's state.)
            Ok(None) => Box::pin(timeout(rt, shared.cli.shutdown_grace, writer))
                .await
                .unwrap_or(Finish::Release),
        }
    };
    node.closed(conn);
    let Ok(ws) = WebSocketStream::reunite(tx, rx) else {
        return;
    };
    // Boxed: the close path's state (a drain buffer, timers, close futures)
    // is allocated only when a connection ends, not held by every live
    // connection's task.
    Box::pin(finish_connection(shared, ws, finish)).await;
}

/// A write failed. The WebSocket layer's own buffer full means a client
/// that does not read: a slow consumer, closed as such; anything else, the
/// transport is gone.
async fn write_failed(node: &Node, conn: &roomcast_core::Conn, e: WsError) -> Finish {
    if matches!(e, WsError::WriteBufferFull(_)) {
        node.outbound_full(conn);
        return poll_fn(|cx| node.poll_abort(conn, cx)).await;
    }
    Finish::Release
}

/// Carries out how the node said the connection ends.
async fn finish_connection<R: Runtime>(shared: &Arc<Shared<R>>, mut ws: Ws<R>, finish: Finish) {
    let rt = &shared.rt;
    let grace = shared.cli.shutdown_grace;
    match finish {
        Finish::Close {
            code,
            reason,
            abort,
        } => {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from(reason),
            };
            if abort {
                let _ = R::socket(ws.get_ref()).set_linger(Some(Duration::ZERO));
                let _ = timeout(rt, ABORT_CLOSE_WAIT, ws.close(Some(frame))).await;
                return;
            }
            if timeout(rt, grace, ws.close(Some(frame))).await.is_none() {
                return;
            }
            end_stream(rt, ws, grace).await;
        }
        Finish::Answer => {
            // tungstenite queued the echo of the client's close when it read
            // it; `close` flushes it (it reports the closed state as an
            // error, which is expected here).
            let _ = timeout(rt, grace, ws.close(None)).await;
            let _ = timeout(rt, grace, ws.flush()).await;
            end_stream(rt, ws, grace).await;
        }
        Finish::Release => {}
    }
}

/// Sends FIN after the close frame, then reads (and discards) whatever the
/// client still sends until it closes: closing with unread input would send
/// a reset that can destroy the close frame.
async fn end_stream<R: Runtime>(rt: &R, ws: Ws<R>, grace: Duration) {
    let mut tcp = ws.into_inner();
    let _ = timeout(rt, grace, tcp.close()).await;
    let _ = timeout(rt, grace, async {
        let mut sink = [0u8; 1024];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn timer_task<R: Runtime>(shared: Arc<Shared<R>>) {
    let node = &shared.node;
    let rt = &shared.rt;
    let mut seen = node.deadline();
    loop {
        let changed = {
            let sleep = pin!(async {
                match seen {
                    Some(d) => rt.sleep_until(d).await,
                    None => std::future::pending().await,
                }
                None
            });
            let changed =
                pin!(async { Some(poll_fn(|cx| node.poll_deadline_change(seen, cx)).await) });
            race(&mut [changed, sleep]).await
        };
        match changed {
            Some(d) => seen = d,
            None => {
                node.timeout(rt.now());
                seen = node.deadline();
            }
        }
    }
}

/// One broker session's links.
struct Link {
    session: Session,
    sink: redis::aio::PubSubSink,
    publisher: redis::aio::MultiplexedConnection,
    /// Dropping it stops the subscriber's reader task.
    _reader: futures_util::future::RemoteHandle<()>,
}

/// Runs the node's broker operations against Redis until the node says stop.
async fn broker_task<R: Runtime>(shared: Arc<Shared<R>>, client: redis::Client) {
    let node = &shared.node;
    let rt = &shared.rt;
    let t = shared.cli.redis_timeout;
    let mut link: Option<Link> = None;
    while let Some(ops) = poll_fn(|cx| node.poll_broker(cx)).await {
        let mut ops = ops.into_iter();
        while let Some(op) = ops.next() {
            let op = match op {
                BrokerOp::Connect(session) => {
                    drop(link.take());
                    link = connect(&shared, &client, session).await;
                    continue;
                }
                BrokerOp::Reset(_) => {
                    link = None;
                    continue;
                }
                op => op,
            };
            let Some(l) = &mut link else {
                // No link (it failed before this op's turn): a publish goes
                // back to the node's buffer; subscriptions are redone by the
                // next link.
                match op {
                    BrokerOp::Publish(batch) => node.broker_unsent(batch),
                    BrokerOp::Query(q) => fail_tickets(node, q.iter().map(|(t, _)| *t)),
                    _ => {}
                }
                continue;
            };
            let session = l.session;
            let mut failed = Vec::new();
            let (ok, unknown) = match op {
                BrokerOp::Subscribe(chs) => {
                    let ok = matches!(timeout(rt, t, l.sink.subscribe(&chs)).await, Some(Ok(())));
                    if ok {
                        node.broker_progress(session, rt.now());
                    }
                    (ok, 0)
                }
                BrokerOp::Unsubscribe(chs) => {
                    let ok = matches!(timeout(rt, t, l.sink.unsubscribe(&chs)).await, Some(Ok(())));
                    if ok {
                        node.broker_progress(session, rt.now());
                    }
                    (ok, 0)
                }
                BrokerOp::Publish(batch) => {
                    let n = batch.len();
                    let calls = batch.iter().map(|o| &o.call);
                    match timeout(rt, t, run_pipeline(&mut l.publisher, calls)).await {
                        Some(Ok(replies)) if !replies.iter().any(link_lost) => {
                            node.broker_published(session, n);
                            let answers: Vec<_> = batch
                                .iter()
                                .zip(replies)
                                .filter_map(|(o, r)| Some((o.ticket?, Ok(r))))
                                .collect();
                            if !answers.is_empty() {
                                node.broker_replies(answers);
                            }
                            (true, n)
                        }
                        _ => {
                            // Their fate is unknown: counted as such, and
                            // whoever waits is told it failed.
                            failed.extend(batch.iter().filter_map(|o| o.ticket));
                            (false, n)
                        }
                    }
                }
                BrokerOp::Query(queries) => {
                    let calls = queries.iter().map(|(_, c)| c);
                    match timeout(rt, t, run_pipeline(&mut l.publisher, calls)).await {
                        Some(Ok(replies)) if !replies.iter().any(link_lost) => {
                            let answers = queries
                                .iter()
                                .zip(replies)
                                .map(|((ticket, _), r)| (*ticket, Ok(r)))
                                .collect();
                            node.broker_replies(answers);
                            for notice in node.take_notices() {
                                warn!("{notice}");
                            }
                            (true, 0)
                        }
                        _ => {
                            failed.extend(queries.iter().map(|(t, _)| *t));
                            (false, 0)
                        }
                    }
                }
                BrokerOp::Probe { channel, payload } => {
                    let mut probe = redis::cmd("PUBLISH");
                    probe.arg(&channel).arg(payload.as_ref());
                    let sent = probe.exec_async(&mut l.publisher);
                    (matches!(timeout(rt, t, sent).await, Some(Ok(()))), 0)
                }
                BrokerOp::Connect(_) | BrokerOp::Reset(_) => unreachable!("handled above"),
            };
            if !ok {
                // The node schedules the reconnect; what was queued behind
                // the failure was never sent and goes back to its buffer.
                warn!("Redis link lost");
                link = None;
                let mut unsent = Vec::new();
                for op in ops.by_ref() {
                    match op {
                        BrokerOp::Publish(batch) => unsent.extend(batch),
                        BrokerOp::Query(q) => failed.extend(q.iter().map(|(t, _)| *t)),
                        _ => {}
                    }
                }
                node.broker_disconnected(session, unknown, unsent, rt.now());
                // After the node knows the link is gone: a heal whose read
                // failed waits for the next link instead of giving up.
                fail_tickets(node, failed.drain(..));
            }
        }
    }
}

/// Runs `calls` in one pipeline; each call's own error is its reply, a
/// failed link is the whole pipeline's error.
async fn run_pipeline<'a>(
    conn: &mut redis::aio::MultiplexedConnection,
    calls: impl Iterator<Item = &'a Call>,
) -> redis::RedisResult<Vec<RedisReply>> {
    let mut pipe = redis::pipe();
    let mut n = 0;
    for call in calls {
        let mut args = call.0.iter();
        let name = args.next().map_or(&b""[..], |b| &b[..]);
        let mut cmd = redis::cmd(std::str::from_utf8(name).unwrap_or("ECHO"));
        for a in args {
            cmd.arg(a.as_ref());
        }
        pipe.add_command(cmd);
        n += 1;
    }
    let results: Vec<redis::RedisResult<redis::Value>> =
        pipe.ignore_errors().query_async(conn).await?;
    if results.len() != n {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "a pipeline answered a different number of replies",
        )));
    }
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok(v) => reply_of(v),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                RedisReply::Error(format!("LINK {e}"))
            }
            Err(e) => RedisReply::Error(match e.code() {
                Some(code) => format!("{code} {}", e.detail().unwrap_or("")),
                None => e.to_string(),
            }),
        })
        .collect())
}

/// A redis-rs value as the core reads replies (RESP3's extra types as the
/// core documents).
fn reply_of(v: redis::Value) -> RedisReply {
    use redis::Value as V;
    match v {
        V::Nil => RedisReply::Nil,
        V::Int(n) => RedisReply::Int(n),
        V::BulkString(b) => RedisReply::Data(b.into()),
        V::SimpleString(s) => RedisReply::Data(s.into()),
        V::Okay => RedisReply::Data(Bytes::from_static(b"OK")),
        V::Array(a) | V::Set(a) => RedisReply::Array(a.into_iter().map(reply_of).collect()),
        V::Push { data, .. } => RedisReply::Array(data.into_iter().map(reply_of).collect()),
        V::Map(kv) => RedisReply::Array(
            kv.into_iter()
                .flat_map(|(k, v)| [reply_of(k), reply_of(v)])
                .collect(),
        ),
        V::Attribute { data, .. } => reply_of(*data),
        V::Double(d) => RedisReply::Data(d.to_string().into()),
        V::Boolean(b) => RedisReply::Int(i64::from(b)),
        V::VerbatimString { text, .. } => RedisReply::Data(text.into()),
        V::ServerError(e) => RedisReply::Error(e.to_string()),
        other => RedisReply::Error(format!("unexpected reply {other:?}")),
    }
}

/// A reply that means the link cannot go on: the server lost its scripts
/// (the next link loads them), or the connection failed mid-pipeline.
fn link_lost(r: &RedisReply) -> bool {
    r.is_noscript() || matches!(r, RedisReply::Error(e) if e.starts_with("LINK "))
}

fn fail_tickets(node: &Node, tickets: impl Iterator<Item = Ticket>) {
    let failed: Vec<_> = tickets
        .map(|t| (t, Err("the Redis link failed".to_string())))
        .collect();
    if !failed.is_empty() {
        node.broker_replies(failed);
    }
}

/// Opens both links of `session` and checks each with a round trip: a
/// Redis that accepts connections but does not answer is not connected.
async fn connect<R: Runtime>(
    shared: &Arc<Shared<R>>,
    client: &redis::Client,
    session: Session,
) -> Option<Link> {
    let rt = &shared.rt;
    let node = &shared.node;
    let connect_timeout = shared.cli.redis_connect_timeout;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(shared.cli.redis_timeout));
    let attempt = async {
        let mut publisher = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        redis::cmd("PING").exec_async(&mut publisher).await?;
        // The scripts first: every EVALSHA on this link finds them.
        for script in SCRIPTS {
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script.source)
                .query_async(&mut publisher)
                .await?;
            if sha != script.sha1() {
                warn!(script = script.name, "Redis hashed a script differently");
            }
        }
        let pubsub = client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.ping::<redis::Value>().await?;
        Ok::<_, redis::RedisError>((publisher, sink, stream))
    };
    let (publisher, sink, mut stream) = match timeout(rt, connect_timeout, attempt).await {
        Some(Ok(links)) => links,
        failed => {
            if let Some(Err(e)) = failed {
                debug!("Redis connect failed: {e}");
            } else {
                debug!("Redis connect timed out");
            }
            node.broker_disconnected(session, 0, Vec::new(), rt.now());
            return None;
        }
    };
    let reader_shared = shared.clone();
    let (reader, handle) = async move {
        let node = &reader_shared.node;
        let mut wakes = Vec::new();
        // Take one message, then whatever else is already there (up to a
        // budget), and only then wake the writers: each finds the whole
        // burst and writes it at once.
        while let Some(msg) = stream.next().await {
            let mut next = Some(msg);
            let mut n = 0u32;
            while let Some(msg) = next.take() {
                let taken = node.broker_message_deferred(
                    msg.get_channel_name().as_bytes(),
                    msg.get_payload_bytes(),
                    &mut wakes,
                );
                if let Taken::TooLarge { len } = taken {
                    warn!(
                        len,
                        "dropped a Redis message larger than --max-broker-payload-bytes"
                    );
                }
                n += 1;
                if n < BROKER_YIELD_EVERY {
                    next = stream.next().now_or_never().flatten();
                }
            }
            wakes.drain(..).for_each(std::task::Waker::wake);
            reader_shared.rt.yield_now().await;
        }
        warn!("Redis subscriber connection closed");
        let now = reader_shared.rt.now();
        node.broker_disconnected(session, 0, Vec::new(), now);
    }
    .remote_handle();
    rt.spawn(reader);
    info!("connected to Redis; checking the link");
    node.broker_connected(session, rt.now());
    Some(Link {
        session,
        sink,
        publisher,
        _reader: handle,
    })
}

/// A stop request that any runtime can await: set once, by [`Running`].
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>);

impl Stop {
    /// Sets it and wakes the waiter.
    pub fn stop(&self) {
        let waker = {
            let mut s = self.0.lock().expect("stop lock");
            s.0 = true;
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Resolves once [`Stop::stop`] was called.
    pub async fn stopped(&self) {
        poll_fn(|cx| {
            let mut s = self.0.lock().expect("stop lock");
            if s.0 {
                Poll::Ready(())
            } else {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

/// A node running on its own thread (tests and embedding).
pub struct Running {
    addr: SocketAddr,
    stop: Stop,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Checks `cli`, binds `cli.listen`, and runs `run(cli, listener, stop)`
    /// on a new thread named `name`: the runtime's executor serving until
    /// `stop` resolves.
    pub fn start(
        cli: Cli,
        name: &str,
        run: impl FnOnce(Cli, std::net::TcpListener, Stop) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Running> {
        check(&cli)?;
        let listener = bind(cli.listen)?;
        let addr = listener.local_addr()?;
        let stop = Stop::default();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{}", addr.port()))
                .spawn(move || run(cli, listener, stop))?
        };
        Ok(Running {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful shutdown, as on SIGTERM; returns when the node has exited.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.stop.stop();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("node thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// A binary's `main`: parses the flags, sets up logging, checks the flags
/// and the Redis URL (exit 2), binds (exit 1), logs the start line and
/// calls `run` with the listener; its error exits 1.
pub fn main(
    run: impl FnOnce(Cli, std::net::TcpListener) -> io::Result<()>,
) -> std::process::ExitCode {
    use clap::Parser;
    use std::process::ExitCode;
    let mut cli = Cli::parse();
    // The file's scalar keys become flags, below those given.
    if let Some(path) = cli.config.clone() {
        let file = std::fs::read_to_string(&path)
            .map_err(|e| format!("{path}: cannot read the config file: {e}"))
            .and_then(|text| settings::parse(&path, &text).map_err(|e| e.to_string()));
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        match file.cli_with_file(std::env::args_os()) {
            Ok(merged) => cli = merged,
            Err(settings::CliFileError::Args(e)) => e.exit(),
            Err(settings::CliFileError::File(e)) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = check(&cli) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let listener = match bind(cli.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", cli.listen);
            return ExitCode::from(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => info!("{}", cli.describe(addr)),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    match run(cli, listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Worker threads for `--threads`: the flag, else one per core.
pub fn threads(cli: &Cli) -> usize {
    cli.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_message_is_sent_as_fragments_that_make_it_up() {
        let message = Bytes::from("é".repeat(FRAGMENT_BYTES + 10));
        let frames: Vec<Frame> = fragments(message.clone()).collect();
        assert_eq!(frames.len(), 2 * (FRAGMENT_BYTES + 10) / FRAGMENT_BYTES + 1);
        let mut joined = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let h = f.header();
            assert_eq!(h.is_final, i + 1 == frames.len());
            let want = if i == 0 { Data::Text } else { Data::Continue };
            assert_eq!(h.opcode, OpCode::Data(want));
            assert!(f.payload().len() <= FRAGMENT_BYTES);
            joined.extend_from_slice(f.payload());
        }
        assert_eq!(joined, message);
    }
}
