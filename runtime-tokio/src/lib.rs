//! roomcast on tokio: the [`Runtime`] of `roomcast-driver` for tokio, its
//! executor setup and its signals. Everything else — sockets, WebSocket,
//! Redis, every decision — is the driver's and the core's, shared with
//! `roomcast-smol`.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use async_tungstenite::tokio::TokioAdapter;
use roomcast_driver::Runtime;

pub use roomcast_driver::{Cli, Running, bind, check, redis_client};

/// tokio, as the driver's runtime.
#[derive(Debug, Clone)]
pub struct Tokio {
    start: Instant,
}

impl Tokio {
    /// The clock starts now. Call inside a tokio runtime.
    pub fn new() -> Tokio {
        Tokio {
            start: Instant::now(),
        }
    }
}

impl Default for Tokio {
    fn default() -> Self {
        Tokio::new()
    }
}

impl Runtime for Tokio {
    type Tcp = TokioAdapter<tokio::net::TcpStream>;
    type Listener = tokio::net::TcpListener;

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(task);
    }

    fn sleep_until(&self, deadline: Duration) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep_until(tokio::time::Instant::from_std(self.start + deadline))
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn yield_now(&self) -> impl Future<Output = ()> + Send {
        tokio::task::yield_now()
    }

    fn listener(&self, l: std::net::TcpListener) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::from_std(l)
    }

    async fn accept(&self, l: &Self::Listener) -> io::Result<Self::Tcp> {
        let (stream, _) = l.accept().await?;
        Ok(TokioAdapter::new(stream))
    }

    fn socket(tcp: &Self::Tcp) -> socket2::SockRef<'_> {
        socket2::SockRef::from(tcp.get_ref())
    }
}

/// A multi-threaded tokio runtime with `--threads` workers.
pub fn runtime(cli: &Cli) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(roomcast_driver::threads(cli))
        .enable_all()
        .build()
}

/// Serves on `listener` until `shutdown` resolves (see
/// [`roomcast_driver::serve`]). Call inside a tokio runtime.
pub async fn serve(
    cli: Cli,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    roomcast_driver::serve(Tokio::new(), cli, listener, shutdown).await
}

/// Binds `cli.listen` and runs a node on a new thread until
/// [`Running::shutdown`].
pub fn start(cli: Cli) -> io::Result<Running> {
    Running::start(cli, "roomcast-tokio", |cli, listener, stop| {
        runtime(&cli)?.block_on(serve(cli, listener, async move { stop.stopped().await }))
    })
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
