//! roomcast on smol: executes `roomcast-core` against real sockets
//! (async-net + async-tungstenite) and real Redis (redis-rs). It holds no
//! policy: every decision is the core's [`Node`] (admission, the request
//! head and its answer, how a connection ends, what to send Redis); this
//! crate only moves bytes and keeps time.
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
//! socket or channel here yields now and then ([`YIELD_EVERY`]).

use std::future::{Future, poll_fn};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake as EndedEarly;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use futures_util::{SinkExt, StreamExt};
use roomcast_core::{
    ABORT_CLOSE_WAIT, ACCEPT_BACKOFF, BROKER_STOP_WAIT, BrokerOp, Finish, HeadReader, Inbound,
    Node, Outgoing, Reply, Session,
};
use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpListener;
use smol::{Async, Executor, Task, Timer};
use tracing::{debug, info, warn};

pub use roomcast_core::cli::Cli;

type Ws = WebSocketStream<Socket>;

/// A connection's socket: async-io's, read only once the reactor said it
/// is readable. async-io (and async-net) try the read syscall first on every
/// poll, and a connection's task is polled whenever its writer is woken, so
/// each delivery cost a failed `recvfrom` as well as its write; tokio reads
/// only on readiness too. Also smaller than `async_net::TcpStream`.
struct Socket {
    io: Async<std::net::TcpStream>,
    /// No `WouldBlock` since the last readiness event.
    readable: bool,
}

impl Socket {
    fn new(io: Async<std::net::TcpStream>) -> Socket {
        Socket { io, readable: true }
    }
}

impl smol::io::AsyncRead for Socket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::io::Read;
        loop {
            if !self.readable {
                std::task::ready!(self.io.poll_readable(cx))?;
                self.readable = true;
            }
            match self.io.get_ref().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                done => return std::task::Poll::Ready(done),
            }
        }
    }
}

impl smol::io::AsyncWrite for Socket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Ends the stream: `shutdown(Write)`, the FIN a client waits for after
    /// the close handshake. (`Async<TcpStream>`'s own `poll_close` only
    /// flushes.)
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(self.io.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

/// How many items a loop handles before yielding to the executor: smol has
/// no cooperative budget, so without this one busy socket could starve the
/// other half of its own connection task.
const YIELD_EVERY: u32 = 16;

/// The same for the task that takes messages from Redis: it runs alone, so
/// it may hand over more (as tokio's budget of 128 does), which lets each
/// connection's writer find more frames to send in one write.
const BROKER_YIELD_EVERY: u32 = 128;

/// State shared by every task of one node.
struct Shared {
    node: Mutex<Node>,
    start: Instant,
    cli: Cli,
    ws_config: WebSocketConfig,
    /// Weak: the executor owns the tasks that hold this.
    executor: Weak<Executor<'static>>,
}

impl Shared {
    fn node(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock is a bug in core; keep serving.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
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
    Ok(socket.into())
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
    redis_client(&cli)?;
    let listener = bind(cli.listen)?;
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
    let redis = redis_client(&cli)?;
    // Per-process entropy, so that a fleet's nodes do not retry in step.
    let jitter_seed = RandomState::new().hash_one(std::process::id());
    let shared = Arc::new(Shared {
        node: Mutex::new(Node::from_cli(&cli, jitter_seed)),
        start: Instant::now(),
        ws_config: ws_config(&cli),
        cli,
        executor,
    });
    let broker = redis.map(|client| shared.spawn(broker_task(shared.clone(), client)));
    let timer = shared.spawn(timer_task(shared.clone()));

    let listener = Arc::<Async<std::net::TcpListener>>::from(listener);
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
                // Refused over the limit: dropped here.
                let admitted = shared.node().admit();
                if let Some(head) = admitted {
                    let guard = SocketGuard(shared.clone());
                    shared.spawn(handle_socket(guard, stream, head)).detach();
                }
                future::yield_now().await;
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off briefly.
                warn!("accept failed: {e}");
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    info!("shutting down: closing every connection with 1001");
    shared.node().shutdown();
    let drained = poll_fn(|cx| shared.node().poll_drained(cx));
    let _ = timeout(shared.cli.drain_wait(), drained).await;
    if let Some(broker) = broker {
        // What is queued goes out unless Redis hangs (dropping the task
        // cancels it).
        let _ = timeout(BROKER_STOP_WAIT, broker).await;
    }
    drop(timer);
    info!("stopped");
    Ok(())
}

/// Reports the socket's end to core however its task ends, even if it is
/// dropped before it first runs: made at admission, moved into the task.
struct SocketGuard(Arc<Shared>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.node().socket_closed();
    }
}

async fn handle_socket(
    guard: SocketGuard,
    stream: Async<std::net::TcpStream>,
    mut head: HeadReader,
) {
    let mut stream = Socket::new(stream);
    let shared = guard.0.clone();
    let _ = stream.io.get_ref().set_nodelay(true);
    let deadline = Instant::now().checked_add(shared.cli.handshake_timeout);
    let timer = || deadline.map_or_else(Timer::never, Timer::at);
    let read = async {
        while let Ok(n) = stream.read(head.buf()).await {
            if head.advance(n) {
                break;
            }
        }
    };
    let _ = until(timer(), read).await;
    let reply = shared.node().answer(head);
    match reply {
        Reply::Upgrade { response, rest } => {
            let written = until(timer(), stream.write_all(&response)).await;
            drop(response);
            if !matches!(written, Some(Ok(()))) {
                shared.node().handshake_failed();
                return;
            }
            let ws = WebSocketStream::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(shared.ws_config),
            )
            .await;
            run_connection(shared, ws).await;
        }
        Reply::Respond(response) => {
            let _ = until(timer(), async {
                stream.write_all(&response).await?;
                // Socket::close is shutdown(Write).
                stream.close().await
            })
            .await;
        }
        Reply::Drop => {}
    }
}

async fn run_connection(shared: Arc<Shared>, ws: Ws) {
    let id = shared.node().open();
    debug!(conn = %id, "open");
    let (mut tx, mut rx) = ws.split();
    let finish = {
        let reader = async {
            let mut peer_closed = false;
            let mut budget = 0u32;
            while let Some(msg) = rx.next().await {
                let input = match &msg {
                    Ok(Message::Text(t)) => Inbound::Text(t.as_bytes()),
                    Ok(Message::Binary(_)) => Inbound::Binary,
                    Ok(Message::Close(_)) => {
                        peer_closed = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(WsError::Capacity(_)) => Inbound::TooLarge,
                    Err(WsError::Utf8(_)) => Inbound::NotUtf8,
                    Err(WsError::Protocol(e)) if !matches!(e, EndedEarly) => Inbound::ProtocolError,
                    Err(_) => break,
                };
                if !shared.node().frame(id, input) {
                    break;
                }
                // Lets the writer of this same task drain now and then.
                budget += 1;
                if budget.is_multiple_of(YIELD_EVERY) {
                    future::yield_now().await;
                }
            }
            let end = shared.node().reading_ended(id, peer_closed);
            match end {
                Some(finish) => finish,
                None => {
                    // Refused: the writer sends the close, unless it is stuck.
                    Timer::after(shared.cli.shutdown_grace).await;
                    Finish::Drop
                }
            }
        };
        let writer = async {
            let mut batches = 0u32;
            loop {
                match poll_fn(|cx| shared.node().poll_outgoing(id, cx)).await {
                    Outgoing::Frames(frames) => {
                        for f in frames {
                            // SAFETY: core only queues frames built from `str`.
                            let text = unsafe { Utf8Bytes::from_bytes_unchecked(f) };
                            if tx.feed(Message::Text(text)).await.is_err() {
                                return Finish::Drop;
                            }
                        }
                        if tx.flush().await.is_err() {
                            return Finish::Drop;
                        }
                        batches += 1;
                        if batches.is_multiple_of(YIELD_EVERY) {
                            future::yield_now().await;
                        }
                    }
                    Outgoing::Finish(finish) => return finish,
                }
            }
        };
        // A slow consumer's writer may be stuck on a full socket: this
        // fires when core drops it, so the task never waits for that write.
        let abort = poll_fn(|cx| shared.node().poll_abort(id, cx));
        future::or(future::or(reader, writer), abort).await
    };
    shared.node().closed(id);
    let Ok(ws) = WebSocketStream::reunite(tx, rx) else {
        return;
    };
    // Boxed: the close path's state (a drain buffer, timers, close futures)
    // is allocated only when a connection ends, not held by every live
    // connection's task.
    Box::pin(finish_connection(shared, ws, finish)).await;
}

/// Carries out how core said the connection ends.
async fn finish_connection(shared: Arc<Shared>, mut ws: Ws, finish: Finish) {
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
                let tcp = ws.get_ref().io.get_ref();
                let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                let _ = timeout(ABORT_CLOSE_WAIT, ws.close(Some(frame))).await;
                return;
            }
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
                let mut reads = 0u32;
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {
                    // A client that keeps sending must not hold the thread.
                    reads += 1;
                    if reads.is_multiple_of(YIELD_EVERY) {
                        future::yield_now().await;
                    }
                }
            })
            .await;
        }
        Finish::Answer => {
            let _ = timeout(grace, ws.close(None)).await;
        }
        Finish::Drop => {}
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

/// Runs core's broker operations against Redis until core says stop.
async fn broker_task(shared: Arc<Shared>, client: redis::Client) {
    let t = shared.cli.redis_timeout;
    let mut link: Option<Link> = None;
    while let Some(ops) = poll_fn(|cx| shared.node().poll_broker(cx)).await {
        for op in ops {
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
            let Some(l) = &mut link else { continue };
            let ok = match op {
                BrokerOp::Subscribe(chs) => {
                    matches!(timeout(t, l.sink.subscribe(&chs)).await, Some(Ok(())))
                }
                BrokerOp::Unsubscribe(chs) => {
                    matches!(timeout(t, l.sink.unsubscribe(&chs)).await, Some(Ok(())))
                }
                BrokerOp::Ping(session) => {
                    let pong = timeout(t, l.sink.ping::<redis::Value>()).await;
                    let ok = matches!(pong, Some(Ok(_)));
                    if ok {
                        shared.node().broker_pong(session);
                    }
                    ok
                }
                BrokerOp::Publish(batch) => {
                    let mut pipe = redis::pipe();
                    for (channel, payload) in &batch {
                        pipe.publish(channel, payload.as_ref()).ignore();
                    }
                    matches!(
                        timeout(t, pipe.exec_async(&mut l.publisher)).await,
                        Some(Ok(()))
                    )
                }
                BrokerOp::Connect(_) | BrokerOp::Reset(_) => unreachable!("handled above"),
            };
            if !ok && let Some(l) = link.take() {
                // Core schedules the reconnect.
                warn!("Redis link lost");
                shared.node().broker_disconnected(l.session, shared.now());
            }
        }
    }
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
        failed => {
            if let Some(Err(e)) = failed {
                debug!("Redis connect failed: {e}");
            } else {
                debug!("Redis connect timed out");
            }
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
            if handled.is_multiple_of(BROKER_YIELD_EVERY) {
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
