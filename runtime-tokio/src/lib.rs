//! roomcast on tokio: executes `roomcast-core` against real sockets
//! (async-tungstenite) and real Redis (redis-rs). It holds no policy: every
//! decision is the core's [`Node`] (admission, the request head and its
//! answer, how a connection ends, what to send Redis); this crate only moves
//! bytes and keeps time.
//!
//! [`start`] runs a node on its own thread and returns a handle (tests and
//! embedding); [`serve`] is the server future itself (the binary).

use std::future::{Future, poll_fn};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake as EndedEarly;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use futures_util::{SinkExt, StreamExt};
use roomcast_core::{
    ABORT_CLOSE_WAIT, ACCEPT_BACKOFF, BROKER_STOP_WAIT, BrokerOp, Finish, HeadReader, Inbound,
    Node, Outgoing, Reply, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{debug, info, warn};

pub use roomcast_core::cli::Cli;

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// State shared by every task of one node.
struct Shared {
    node: Mutex<Node>,
    start: Instant,
    cli: Cli,
    ws_config: WebSocketConfig,
}

impl Shared {
    fn node(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock is a bug in core; keep serving.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
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
    redis_client(&cli)?;
    let listener = bind(cli.listen)?;
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
    let redis = redis_client(&cli)?;
    // Per-process entropy, so that a fleet's nodes do not retry in step.
    let jitter_seed = RandomState::new().hash_one(std::process::id());
    let shared = Arc::new(Shared {
        node: Mutex::new(Node::from_cli(&cli, jitter_seed)),
        start: Instant::now(),
        ws_config: ws_config(&cli),
        cli,
    });
    let broker = redis.map(|client| tokio::spawn(broker_task(shared.clone(), client)));
    let timer = tokio::spawn(timer_task(shared.clone()));

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Refused over the limit: dropped here.
                    let admitted = shared.node().admit();
                    if let Some(head) = admitted {
                        let guard = SocketGuard(shared.clone());
                        tokio::spawn(handle_socket(guard, stream, head));
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    info!("shutting down: closing every connection with 1001");
    shared.node().shutdown();
    let drained = poll_fn(|cx| shared.node().poll_drained(cx));
    let _ = timeout(shared.cli.drain_wait(), drained).await;
    if let Some(broker) = broker {
        // What is queued goes out unless Redis hangs.
        let _ = timeout(BROKER_STOP_WAIT, broker).await;
    }
    timer.abort();
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

async fn handle_socket(guard: SocketGuard, mut stream: TcpStream, mut head: HeadReader) {
    let shared = guard.0.clone();
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.cli.handshake_timeout;
    let read = async {
        while let Ok(n) = stream.read(head.buf()).await {
            if head.advance(n) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, read).await;
    let reply = shared.node().answer(head);
    match reply {
        Reply::Upgrade { response, rest } => {
            let written = tokio::time::timeout_at(deadline, stream.write_all(&response)).await;
            drop(response);
            if !matches!(written, Ok(Ok(()))) {
                shared.node().handshake_failed();
                return;
            }
            let ws = WebSocketStream::from_partially_read(
                TokioAdapter::new(stream),
                rest,
                Role::Server,
                Some(shared.ws_config),
            )
            .await;
            run_connection(shared, ws).await;
        }
        Reply::Respond(response) => {
            let _ = tokio::time::timeout_at(deadline, async {
                stream.write_all(&response).await?;
                stream.shutdown().await
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
            }
            shared.node().reading_ended(id, peer_closed)
        };
        let writer = async {
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
                    }
                    Outgoing::Finish(finish) => return finish,
                }
            }
        };
        // A slow consumer's writer may be stuck on a full socket: this
        // fires when core drops it, so the task never waits for that write.
        let abort = poll_fn(|cx| shared.node().poll_abort(id, cx));
        tokio::pin!(reader, writer);
        let grace = shared.cli.shutdown_grace;
        tokio::select! {
            end = &mut reader => match end {
                Some(finish) => finish,
                // Refused: the writer sends the close, unless it is stuck.
                None => timeout(grace, writer).await.unwrap_or(Finish::Drop),
            },
            finish = &mut writer => finish,
            finish = abort => finish,
        }
    };
    shared.node().closed(id);
    let Ok(ws) = WebSocketStream::reunite(tx, rx) else {
        return;
    };
    // Boxed: the close path's state (a 1 KiB drain buffer, timers, close
    // futures) is allocated only when a connection ends, not held by every
    // live connection's task.
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
                let tcp = ws.get_ref().get_ref();
                let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                let _ = timeout(ABORT_CLOSE_WAIT, ws.close(Some(frame))).await;
                return;
            }
            if timeout(grace, ws.close(Some(frame))).await.is_err() {
                return;
            }
            // Send FIN after the close frame, then read (and discard) whatever
            // the client still sends until it closes: closing with unread
            // input would send a reset that can destroy the close frame.
            let tcp = ws.get_mut().get_mut();
            let _ = tcp.shutdown().await;
            let _ = timeout(grace, async {
                let mut sink = [0u8; 1024];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
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
                    matches!(timeout(t, l.sink.subscribe(&chs)).await, Ok(Ok(())))
                }
                BrokerOp::Unsubscribe(chs) => {
                    matches!(timeout(t, l.sink.unsubscribe(&chs)).await, Ok(Ok(())))
                }
                BrokerOp::Ping(session) => {
                    let pong = timeout(t, l.sink.ping::<redis::Value>()).await;
                    let ok = matches!(pong, Ok(Ok(_)));
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
                        Ok(Ok(()))
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
        Ok(Ok(links)) => links,
        failed => {
            if let Ok(Err(e)) = failed {
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
