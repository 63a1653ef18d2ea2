//! roomcast on tokio: executes `roomcast-core` against real sockets
//! (async-tungstenite) and real Redis (redis-rs). It holds no policy: every
//! decision is the core's [`Node`]; this crate only moves bytes.
//!
//! [`start`] runs a node on its own thread and returns a handle (tests and
//! embedding); [`serve`] is the server future itself (the binary).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use futures_util::{SinkExt, StreamExt};
use roomcast_core::http::{self, Decision};
use roomcast_core::{BrokerMode, Command, Inbound, IoStats, Node, Outgoing, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

pub use roomcast_core::cli::Cli;

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// State shared by every task of one node.
struct Shared {
    node: Mutex<Node>,
    start: Instant,
    cli: Cli,
    ws_config: WebSocketConfig,
    sockets: AtomicUsize,
    sockets_done: Notify,
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

/// A node running on its own thread.
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("roomcast-tokio-{}", addr.port()))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                serve(cli, listener, async {
                    let _ = stopped.await;
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
pub async fn serve(
    cli: Cli,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
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
        sockets: AtomicUsize::new(0),
        sockets_done: Notify::new(),
        handshake_failures: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        http_requests: AtomicU64::new(0),
    });
    let broker = shared.cli.redis.clone().map(|url| {
        let shared = shared.clone();
        tokio::spawn(async move { broker_task(shared, url).await })
    });
    let timer = tokio::spawn(timer_task(shared.clone()));

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if shared.sockets.load(Ordering::Relaxed) >= shared.cli.max_connections {
                        shared.rejected.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                    shared.sockets.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(handle_socket(shared.clone(), stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    info!("shutting down: closing every connection with 1001");
    shared.node().shutdown();
    let grace = shared.cli.shutdown_grace + Duration::from_millis(500);
    let _ = tokio::time::timeout(grace, async {
        while shared.sockets.load(Ordering::Acquire) > 0 {
            let notified = shared.sockets_done.notified();
            if shared.sockets.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
    })
    .await;
    if let Some(broker) = broker {
        // Unsubscribes go out unless Redis hangs; then give up after a second.
        let _ = tokio::time::timeout(Duration::from_secs(1), broker).await;
    }
    timer.abort();
    info!("stopped");
    Ok(())
}

/// Decrements the socket count however the connection task ends.
struct SocketGuard(Arc<Shared>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.0.sockets.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.sockets_done.notify_waiters();
        }
    }
}

async fn handle_socket(shared: Arc<Shared>, mut stream: TcpStream) {
    let _guard = SocketGuard(shared.clone());
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.cli.handshake_timeout;
    let head = tokio::time::timeout_at(deadline, read_head(&mut stream, !shared.cli.no_chat_page));
    let (decision, buf) = match head.await {
        Ok(Ok(found)) => found,
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
                tokio::time::timeout_at(deadline, stream.write_all(&reply))
                    .await
                    .is_ok_and(|r| r.is_ok())
            };
            if !written {
                shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let rest = buf[head_len..].to_vec();
            drop(buf);
            let ws = WebSocketStream::from_partially_read(
                TokioAdapter::new(stream),
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
            let _ = tokio::time::timeout_at(deadline, async {
                stream.write_all(&reply).await?;
                stream.shutdown().await
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
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
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
            while let Some(msg) = rx.next().await {
                let input = match &msg {
                    Ok(Message::Text(t)) => Inbound::Text(t.as_bytes()),
                    Ok(Message::Binary(_)) => Inbound::Binary,
                    Ok(Message::Close(_)) => return End::PeerClosed,
                    Ok(_) => continue,
                    Err(WsError::Capacity(_)) => Inbound::TooLarge,
                    Err(_) => return End::Broken,
                };
                let mut node = shared.node();
                node.frame(id, input);
                if node.is_closing(id) {
                    // Refused: stop reading; the writer sends the close.
                    return End::Broken;
                }
            }
            End::Broken
        };
        let writer = async {
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
        // A slow consumer's writer may be stuck on a full socket: this
        // fires when core drops it, so the task never waits for that write.
        let abort = poll_fn(|cx| shared.node().poll_abort(id, cx));
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => match end {
                // A refused frame: the writer has the close to send.
                End::Broken if shared.node().is_closing(id) => writer.await,
                end => end,
            },
            end = &mut writer => end,
            () = abort => match shared.node().queued_close(id) {
                Some((code, reason)) => End::Close(code, reason.to_string(), true),
                None => End::Broken,
            },
        }
    };
    shared.node().closed(id);
    let Ok(ws) = WebSocketStream::reunite(tx, rx) else {
        return;
    };
    // Boxed: the close path's state (a 1 KiB drain buffer, timers, close
    // futures) is allocated only when a connection ends, not held by every
    // live connection's task.
    Box::pin(finish(shared, ws, end)).await;
}

/// Sends or answers the close handshake.
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
                let tcp = ws.get_ref().get_ref();
                let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), ws.close(Some(frame))).await;
                return;
            }
            let grace = shared.cli.shutdown_grace;
            if tokio::time::timeout(grace, ws.close(Some(frame)))
                .await
                .is_err()
            {
                return;
            }
            // Send FIN after the close frame, then read (and discard) whatever
            // the client still sends until it closes: closing with unread
            // input would send a reset that can destroy the close frame.
            let tcp = ws.get_mut().get_mut();
            let _ = tcp.shutdown().await;
            let _ = tokio::time::timeout(grace, async {
                let mut sink = [0u8; 1024];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        End::PeerClosed => {
            // Completes the close handshake the client started.
            let _ = tokio::time::timeout(shared.cli.shutdown_grace, ws.close(None)).await;
        }
        End::Broken => {}
    }
}

async fn timer_task(shared: Arc<Shared>) {
    let mut seen = shared.node().deadline();
    loop {
        let sleep = async {
            match seen {
                Some(d) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(shared.start + d)).await
                }
                None => std::future::pending().await,
            }
        };
        let changed = poll_fn(|cx| shared.node().poll_deadline_change(seen, cx));
        tokio::select! {
            _ = sleep => {
                let mut node = shared.node();
                node.timeout(shared.now());
                seen = node.deadline();
            }
            d = changed => seen = d,
        }
    }
}

/// One broker session's links.
struct Link {
    session: Session,
    sink: redis::aio::PubSubSink,
    publisher: redis::aio::MultiplexedConnection,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn broker_task(shared: Arc<Shared>, url: String) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            warn!("invalid Redis URL: {e}");
            return;
        }
    };
    let timeout = shared.cli.redis_timeout;
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
                publish(&shared, &mut link, &pipe, timeout).await;
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
                        let r = tokio::time::timeout(timeout, l.sink.subscribe(&channels)).await;
                        check(
                            &shared,
                            &mut link,
                            r.map_err(|_| ()).and_then(|r| r.map_err(|_| ())),
                        );
                    }
                }
                Command::BrokerUnsubscribe(channels) => {
                    if let Some(l) = &mut link {
                        let r = tokio::time::timeout(timeout, l.sink.unsubscribe(&channels)).await;
                        check(
                            &shared,
                            &mut link,
                            r.map_err(|_| ()).and_then(|r| r.map_err(|_| ())),
                        );
                    }
                }
                Command::BrokerPing(session) => {
                    if let Some(l) = &mut link {
                        let r = tokio::time::timeout(timeout, l.sink.ping::<redis::Value>()).await;
                        let ok = matches!(r, Ok(Ok(_)));
                        if ok {
                            shared.node().broker_pong(session);
                        }
                        check(&shared, &mut link, if ok { Ok(()) } else { Err(()) });
                    }
                }
                Command::BrokerPublish { .. } | Command::SendTo(..) | Command::Close { .. } => {}
            }
        }
        if queued > 0 {
            publish(&shared, &mut link, &pipe, timeout).await;
        }
    }
}

/// Reports a failed link to core (which schedules the reconnect) and drops it.
fn check(shared: &Shared, link: &mut Option<Link>, result: Result<(), ()>) {
    if result.is_err()
        && let Some(l) = link.take()
    {
        warn!("Redis link lost");
        shared.node().broker_disconnected(l.session, shared.now());
    }
}

async fn publish(
    shared: &Shared,
    link: &mut Option<Link>,
    pipe: &redis::Pipeline,
    timeout: Duration,
) {
    let Some(l) = link else { return };
    let r = tokio::time::timeout(timeout, pipe.exec_async(&mut l.publisher)).await;
    check(
        shared,
        link,
        r.map_err(|_| ()).and_then(|r| r.map_err(|_| ())),
    );
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
    let (publisher, pubsub) = match tokio::time::timeout(connect_timeout, attempt).await {
        Ok(Ok(links)) => links,
        Ok(Err(e)) => {
            debug!("Redis connect failed: {e}");
            shared.node().broker_disconnected(session, shared.now());
            return None;
        }
        Err(_) => {
            debug!("Redis connect timed out");
            shared.node().broker_disconnected(session, shared.now());
            return None;
        }
    };
    let (sink, mut stream) = pubsub.split();
    let reader_shared = shared.clone();
    let reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            reader_shared
                .node()
                .broker_message(msg.get_channel_name().as_bytes(), msg.get_payload_bytes());
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
        reader,
    })
}
