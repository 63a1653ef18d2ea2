//! roomcast on smol: executes `roomcast-core` against real sockets
//! (async-net + async-tungstenite) and real Redis (redis-rs). It holds no
//! policy: every decision is the core's [`Node`]; this crate only moves bytes.
//!
//! [`start`] runs a node on its own thread and returns a handle (tests and
//! embedding); [`serve`] is the server future itself (the binary). Either way
//! the node's tasks run on a [`smol::Executor`] of its own, driven by two
//! threads: the one awaiting [`serve`] and one helper thread.
//!
//! redis-rs runs its connection drivers on smol's global executor
//! (`smol::spawn`); the `tokio` crate is linked for redis-rs's channels only
//! (feature `sync`), never a tokio runtime.
//!
//! smol has no cooperative budget (tokio makes a busy socket return
//! `Pending` now and then): a loop whose source is always ready would keep
//! its task, and the futures raced beside it in that task (a connection's
//! writer beside its reader), from ever being polled. So every loop over a
//! socket or channel here yields once per item.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use event_listener::Event;
use futures_util::{SinkExt, StreamExt};
use roomcast_core::http::{self, Decision};
use roomcast_core::{BrokerMode, Command, Inbound, IoStats, Node, Outgoing, Session};
use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{Executor, Task, Timer};
use tracing::{debug, info, warn};

pub use roomcast_core::cli::Cli;

type Ws = WebSocketStream<TcpStream>;

/// How many items a loop handles before yielding to the executor: smol has
/// no cooperative budget, so without this one busy socket could starve the
/// other half of its own connection task.
const YIELD_EVERY: u32 = 16;

/// State shared by every task of one node.
struct Shared {
    node: Mutex<Node>,
    start: Instant,
    cli: Cli,
    ws_config: WebSocketConfig,
    /// Weak: the executor owns the tasks that hold this.
    executor: Weak<Executor<'static>>,
    sockets: AtomicUsize,
    sockets_done: Event,
    handshake_failures: AtomicU64,
    rejected: AtomicU64,
    http_requests: AtomicU64,
}

impl Shared {
    fn node(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock is a bug in core; keep serving.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn io_stats(&self) -> IoStats {
        IoStats {
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            rejected_connections: self.rejected.load(Ordering::Relaxed),
            http_requests: self.http_requests.load(Ordering::Relaxed),
        }
    }

    /// Spawns onto the node's executor. Only called from its tasks, which
    /// run inside `Executor::run` and so while the executor is alive.
    fn spawn<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> Task<T> {
        self.executor
            .upgrade()
            .expect("the executor outlives the tasks it runs")
            .spawn(f)
    }
}

/// The WebSocket settings for these limits: an idle connection holds a small
/// read buffer, and no buffer is unbounded.
pub fn ws_config(cli: &Cli) -> WebSocketConfig {
    let frame = cli.max_frame_bytes as usize;
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(4096)
        .max_write_buffer_size(cli.max_outbound_bytes as usize * 2 + frame + 1024)
        .max_message_size(Some(frame))
        .max_frame_size(Some(frame))
}

/// `f`, or `None` if it has not finished after `d`.
async fn timeout<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    until(Timer::after(d), f).await
}

/// `f`, or `None` if `timer` fires first.
async fn until<T>(timer: Timer, f: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(f.await) }, async {
        timer.await;
        None
    })
    .await
}

/// A node running on its own thread.
pub struct Running {
    addr: SocketAddr,
    stop: Option<smol::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful shutdown, as on SIGTERM; returns when the node has exited.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        // Closing the channel is the signal.
        drop(self.stop.take());
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

/// Binds `cli.listen` and runs a node on a new thread until
/// [`Running::shutdown`].
pub fn start(cli: Cli) -> io::Result<Running> {
    let listener = std::net::TcpListener::bind(cli.listen)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name(format!("roomcast-smol-{}", addr.port()))
        .spawn(move || {
            smol::block_on(async move {
                let listener = TcpListener::try_from(listener)?;
                serve(cli, listener, async {
                    let _ = stopped.recv().await;
                })
                .await
            })
        })?;
    Ok(Running {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Serves until `shutdown` resolves, then closes every client with 1001,
/// waits up to `--shutdown-grace` for their close handshakes, drops the
/// broker subscriptions and returns.
///
/// The node's tasks run on an executor of their own, on the calling thread
/// (while this future is awaited) and on one helper thread; tasks still
/// running when it returns are dropped.
pub async fn serve(
    cli: Cli,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let executor = Arc::new(Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let helper = {
        let executor = executor.clone();
        std::thread::Builder::new()
            .name("roomcast-smol-worker".into())
            .spawn(move || smol::block_on(executor.run(stopped.recv())))?
    };
    let weak = Arc::downgrade(&executor);
    let result = executor.run(run(cli, listener, shutdown, weak)).await;
    drop(stop);
    let _ = smol::unblock(move || helper.join()).await;
    // The last handle: cancels whatever task is left.
    drop(executor);
    result
}

async fn run(
    cli: Cli,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    executor: Weak<Executor<'static>>,
) -> io::Result<()> {
    let start = Instant::now();
    let seed = u64::from(std::process::id()) ^ start.elapsed().subsec_nanos() as u64;
    let mode = if cli.redis.is_some() {
        BrokerMode::Remote
    } else {
        BrokerMode::Local
    };
    let node = Node::new(cli.hub_config(seed), mode, Duration::ZERO);
    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        start,
        ws_config: ws_config(&cli),
        cli,
        executor,
        sockets: AtomicUsize::new(0),
        sockets_done: Event::new(),
        handshake_failures: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        http_requests: AtomicU64::new(0),
    });
    let broker = shared
        .cli
        .redis
        .clone()
        .map(|url| shared.spawn(broker_task(shared.clone(), url)));
    let timer = shared.spawn(timer_task(shared.clone()));

    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = future::or(
            async {
                shutdown.as_mut().await;
                None
            },
            async { Some(listener.accept().await) },
        );
        match accepted.await {
            None => break,
            Some(Ok((stream, _))) => {
                if shared.sockets.load(Ordering::Relaxed) >= shared.cli.max_connections {
                    shared.rejected.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                shared.sockets.fetch_add(1, Ordering::Relaxed);
                shared.spawn(handle_socket(shared.clone(), stream)).detach();
                future::yield_now().await;
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off briefly.
                warn!("accept failed: {e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    info!("shutting down: closing every connection with 1001");
    shared.node().shutdown();
    let grace = shared.cli.shutdown_grace + Duration::from_millis(500);
    let _ = timeout(grace, async {
        while shared.sockets.load(Ordering::Acquire) > 0 {
            let notified = shared.sockets_done.listen();
            if shared.sockets.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
    })
    .await;
    if let Some(broker) = broker {
        // Unsubscribes go out unless Redis hangs; then give up after a second
        // (dropping the task cancels it).
        let _ = timeout(Duration::from_secs(1), broker).await;
    }
    drop(timer);
    info!("stopped");
    Ok(())
}

/// Decrements the socket count however the connection task ends.
struct SocketGuard(Arc<Shared>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.0.sockets.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.sockets_done.notify(usize::MAX);
        }
    }
}

async fn handle_socket(shared: Arc<Shared>, mut stream: TcpStream) {
    let _guard = SocketGuard(shared.clone());
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now().checked_add(shared.cli.handshake_timeout);
    let timer = || deadline.map_or_else(Timer::never, Timer::at);
    let head = until(timer(), read_head(&mut stream, !shared.cli.no_chat_page));
    let (decision, buf) = match head.await {
        Some(Ok(found)) => found,
        _ => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    match decision {
        Decision::Upgrade { key, head_len } => {
            // Scoped so that the key, accept value and reply are freed before
            // the connection's long life.
            let written = {
                let accept =
                    async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                drop(key);
                let reply = http::switching_protocols(&accept);
                until(timer(), stream.write_all(&reply))
                    .await
                    .is_some_and(|r| r.is_ok())
            };
            if !written {
                shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let rest = buf[head_len..].to_vec();
            drop(buf);
            let ws = WebSocketStream::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(shared.ws_config),
            )
            .await;
            run_connection(shared, ws).await;
        }
        Decision::Route { route, head_only } => {
            shared.http_requests.fetch_add(1, Ordering::Relaxed);
            let reply = http::respond(&shared.node(), &shared.io_stats(), route, head_only);
            let _ = until(timer(), async {
                stream.write_all(&reply).await?;
                // async-net's close is shutdown(Write).
                stream.close().await
            })
            .await;
        }
        Decision::Incomplete | Decision::Invalid => {
            shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads until the request head is complete (or is not HTTP).
async fn read_head(stream: &mut TcpStream, index: bool) -> io::Result<(Decision, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match http::route(&buf, index) {
            Decision::Incomplete => continue,
            Decision::Invalid => return Err(io::ErrorKind::InvalidData.into()),
            d => return Ok((d, buf)),
        }
    }
}

/// How a connection's reading and writing ended.
enum End {
    /// The server closes it with this code and reason.
    Close(u16, String, bool),
    /// The client sent a close frame: answer it.
    PeerClosed,
    /// The transport is gone.
    Broken,
}

async fn run_connection(shared: Arc<Shared>, ws: Ws) {
    let id = shared.node().open();
    debug!(conn = %id, "open");
    let (mut tx, mut rx) = ws.split();
    let end = {
        let reader = async {
            let mut budget = 0u32;
            while let Some(msg) = rx.next().await {
                let input = match &msg {
                    Ok(Message::Text(t)) => Inbound::Text(t.as_bytes()),
                    Ok(Message::Binary(_)) => Inbound::Binary,
                    Ok(Message::Close(_)) => return End::PeerClosed,
                    Ok(_) => continue,
                    Err(WsError::Capacity(_)) => Inbound::TooLarge,
                    Err(_) => return End::Broken,
                };
                let closing = {
                    let mut node = shared.node();
                    node.frame(id, input);
                    node.is_closing(id)
                };
                if closing {
                    // Refused: stop reading; the writer sends the close.
                    return End::Broken;
                }
                // Lets the writer of this same task drain now and then
                // (smol has no cooperative budget of its own).
                budget += 1;
                if budget.is_multiple_of(YIELD_EVERY) {
                    future::yield_now().await;
                }
            }
            End::Broken
        };
        let writer = async {
            let mut batches = 0u32;
            loop {
                let out = poll_fn(|cx| shared.node().poll_outgoing(id, cx)).await;
                match out {
                    Outgoing::Frames(frames) => {
                        for f in frames {
                            // SAFETY: core only queues frames built from `str`.
                            let text = unsafe { Utf8Bytes::from_bytes_unchecked(f) };
                            if tx.feed(Message::Text(text)).await.is_err() {
                                return End::Broken;
                            }
                        }
                        if tx.flush().await.is_err() {
                            return End::Broken;
                        }
                        batches += 1;
                        if batches.is_multiple_of(YIELD_EVERY) {
                            future::yield_now().await;
                        }
                    }
                    Outgoing::Close {
                        code,
                        reason,
                        abort,
                    } => return End::Close(code, reason, abort),
                    Outgoing::Gone => return End::Broken,
                }
            }
        };
        let reader = async {
            match reader.await {
                // A refused frame: leave it to the writer, which has the
                // close to send.
                End::Broken if shared.node().is_closing(id) => future::pending().await,
                end => end,
            }
        };
        // A slow consumer's writer may be stuck on a full socket: this
        // fires when core drops it, so the task never waits for that write.
        let abort = async {
            poll_fn(|cx| shared.node().poll_abort(id, cx)).await;
            match shared.node().queued_close(id) {
                Some((code, reason)) => End::Close(code, reason.to_string(), true),
                None => End::Broken,
            }
        };
        future::or(future::or(reader, writer), abort).await
    };
    shared.node().closed(id);
    let Ok(ws) = WebSocketStream::reunite(tx, rx) else {
        return;
    };
    // Boxed: the close path's state (a drain buffer, timers, close futures)
    // is allocated only when a connection ends, not held by every live
    // connection's task.
    Box::pin(finish(shared, ws, end)).await;
}

async fn finish(shared: Arc<Shared>, mut ws: Ws, end: End) {
    match end {
        End::Close(code, reason, abort) => {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from(reason),
            };
            if abort {
                // A slow consumer: one attempt at the close frame, then let
                // the socket go with its unsent data discarded.
                let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
                let _ = timeout(Duration::from_millis(100), ws.close(Some(frame))).await;
                return;
            }
            let grace = shared.cli.shutdown_grace;
            if timeout(grace, ws.close(Some(frame))).await.is_none() {
                return;
            }
            // Send FIN after the close frame, then read (and discard) whatever
            // the client still sends until it closes: closing with unread
            // input would send a reset that can destroy the close frame.
            let tcp = ws.get_mut();
            let _ = tcp.close().await;
            let _ = timeout(grace, async {
                let mut sink = [0u8; 1024];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        End::PeerClosed => {
            // Completes the close handshake the client started.
            let _ = timeout(shared.cli.shutdown_grace, ws.close(None)).await;
        }
        End::Broken => {}
    }
}

async fn timer_task(shared: Arc<Shared>) {
    let mut seen = shared.node().deadline();
    loop {
        let sleep = seen.map_or_else(Timer::never, |d| Timer::at(shared.start + d));
        let expired = async {
            sleep.await;
            let mut node = shared.node();
            node.timeout(shared.now());
            node.deadline()
        };
        let changed = poll_fn(|cx| shared.node().poll_deadline_change(seen, cx));
        seen = future::or(expired, changed).await;
    }
}

/// One broker session's links. Dropping it cancels the reader, which closes
/// the subscriber connection.
struct Link {
    session: Session,
    sink: redis::aio::PubSubSink,
    publisher: redis::aio::MultiplexedConnection,
    _reader: Task<()>,
}

async fn broker_task(shared: Arc<Shared>, url: String) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            warn!("invalid Redis URL: {e}");
            return;
        }
    };
    let timeout_d = shared.cli.redis_timeout;
    let mut link: Option<Link> = None;
    loop {
        let cmds = poll_fn(|cx| shared.node().poll_broker(cx)).await;
        if cmds.is_empty() {
            // Shut down and everything executed.
            return;
        }
        let mut pipe = redis::pipe();
        let mut queued = 0usize;
        for cmd in cmds {
            if let Command::BrokerPublish { channel, payload } = cmd {
                pipe.publish(channel, payload.as_ref()).ignore();
                queued += 1;
                continue;
            }
            if queued > 0 {
                publish(&shared, &mut link, &pipe, timeout_d).await;
                pipe = redis::pipe();
                queued = 0;
            }
            match cmd {
                Command::BrokerConnect(session) => {
                    drop(link.take());
                    link = connect(&shared, &client, session).await;
                }
                Command::BrokerReset(session) => {
                    if link.as_ref().is_some_and(|l| l.session == session) {
                        link = None;
                    }
                    if shared.node().hub().broker_state() == roomcast_core::BrokerState::Stopped {
                        return;
                    }
                }
                Command::BrokerSubscribe(channels) => {
                    if let Some(l) = &mut link {
                        let r = timeout(timeout_d, l.sink.subscribe(&channels)).await;
                        check(&shared, &mut link, matches!(r, Some(Ok(()))));
                    }
                }
                Command::BrokerUnsubscribe(channels) => {
                    if let Some(l) = &mut link {
                        let r = timeout(timeout_d, l.sink.unsubscribe(&channels)).await;
                        check(&shared, &mut link, matches!(r, Some(Ok(()))));
                    }
                }
                Command::BrokerPing(session) => {
                    if let Some(l) = &mut link {
                        let r = timeout(timeout_d, l.sink.ping::<redis::Value>()).await;
                        let ok = matches!(r, Some(Ok(_)));
                        if ok {
                            shared.node().broker_pong(session);
                        }
                        check(&shared, &mut link, ok);
                    }
                }
                Command::BrokerPublish { .. } | Command::SendTo(..) | Command::Close { .. } => {}
            }
        }
        if queued > 0 {
            publish(&shared, &mut link, &pipe, timeout_d).await;
        }
    }
}

/// Reports a failed link to core (which schedules the reconnect) and drops it.
fn check(shared: &Shared, link: &mut Option<Link>, ok: bool) {
    if !ok && let Some(l) = link.take() {
        warn!("Redis link lost");
        shared.node().broker_disconnected(l.session, shared.now());
    }
}

async fn publish(
    shared: &Shared,
    link: &mut Option<Link>,
    pipe: &redis::Pipeline,
    timeout_d: Duration,
) {
    let Some(l) = link else { return };
    let r = timeout(timeout_d, pipe.exec_async(&mut l.publisher)).await;
    check(shared, link, matches!(r, Some(Ok(()))));
}

async fn connect(shared: &Arc<Shared>, client: &redis::Client, session: Session) -> Option<Link> {
    let connect_timeout = shared.cli.redis_connect_timeout;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(shared.cli.redis_timeout));
    let attempt = async {
        let publisher = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        let pubsub = client.get_async_pubsub().await?;
        Ok::<_, redis::RedisError>((publisher, pubsub))
    };
    let (publisher, pubsub) = match timeout(connect_timeout, attempt).await {
        Some(Ok(links)) => links,
        Some(Err(e)) => {
            debug!("Redis connect failed: {e}");
            shared.node().broker_disconnected(session, shared.now());
            return None;
        }
        None => {
            debug!("Redis connect timed out");
            shared.node().broker_disconnected(session, shared.now());
            return None;
        }
    };
    let (sink, mut stream) = pubsub.split();
    let reader_shared = shared.clone();
    let reader = shared.spawn(async move {
        let mut handled = 0u32;
        while let Some(msg) = stream.next().await {
            reader_shared
                .node()
                .broker_message(msg.get_channel_name().as_bytes(), msg.get_payload_bytes());
            handled += 1;
            if handled.is_multiple_of(YIELD_EVERY) {
                future::yield_now().await;
            }
        }
        warn!("Redis subscriber connection closed");
        let now = reader_shared.now();
        reader_shared.node().broker_disconnected(session, now);
    });
    info!("connected to Redis");
    shared.node().broker_connected(session, shared.now());
    Some(Link {
        session,
        sink,
        publisher,
        _reader: reader,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn serves_healthz_and_shuts_down() {
        let mut cli = Cli::defaults();
        cli.listen = "127.0.0.1:0".parse().unwrap();
        let node = start(cli).unwrap();
        let mut c = std::net::TcpStream::connect(node.addr()).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        node.shutdown().unwrap();
    }
}
