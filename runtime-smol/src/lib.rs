//! roomcast on smol: the [`Runtime`] of `roomcast-driver` for smol, its
//! executor setup and its signals. Everything else — sockets, WebSocket,
//! Redis, every decision — is the driver's and the core's, shared with
//! `roomcast-tokio`.
//!
//! The node's tasks run on a [`smol::Executor`] of its own, on `--threads`
//! threads (one per core by default, as tokio). redis-rs runs its
//! connection drivers on smol's global executor; the `tokio` crate is
//! linked for redis-rs's channels only (feature `sync`), never a tokio
//! runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use roomcast_driver::Runtime;
use smol::{Async, Executor, Timer};

pub use roomcast_driver::{Cli, Running, bind, check, redis_client};

/// smol, as the driver's runtime: an executor of the node's own.
#[derive(Clone)]
pub struct Smol {
    start: Instant,
    executor: Arc<Executor<'static>>,
}

impl std::fmt::Debug for Smol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smol").field("start", &self.start).finish()
    }
}

/// A connection's socket: async-io's, read only once the reactor said it
/// is readable. async-io tries the read syscall first on every poll, and a
/// connection's task is polled whenever its writer is woken, so each
/// delivery would cost a failed `recvfrom` as well as its write; tokio reads
/// only on readiness too.
#[derive(Debug)]
pub struct Socket {
    io: Async<std::net::TcpStream>,
    /// No `WouldBlock` since the last readiness event.
    readable: bool,
}

impl futures_io::AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        use std::io::Read;
        loop {
            if !self.readable {
                ready!(self.io.poll_readable(cx))?;
                self.readable = true;
            }
            match self.io.get_ref().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl futures_io::AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Ends the stream: `shutdown(Write)`, the FIN a client waits for after
    /// the close handshake. (`Async<TcpStream>`'s own `poll_close` only
    /// flushes.)
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

impl Runtime for Smol {
    type Tcp = Socket;
    type Listener = Async<std::net::TcpListener>;

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.executor.spawn(task).detach();
    }

    fn sleep_until(&self, deadline: Duration) -> impl Future<Output = ()> + Send + 'static {
        let timer = Timer::at(self.start + deadline);
        async move {
            timer.await;
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn yield_now(&self) -> impl Future<Output = ()> + Send {
        smol::future::yield_now()
    }

    fn listener(&self, l: std::net::TcpListener) -> io::Result<Self::Listener> {
        Async::new(l)
    }

    async fn accept(&self, l: &Self::Listener) -> io::Result<Self::Tcp> {
        let (stream, _) = l.accept().await?;
        Ok(Socket {
            io: stream,
            readable: true,
        })
    }

    fn socket(tcp: &Self::Tcp) -> socket2::SockRef<'_> {
        socket2::SockRef::from(tcp.io.get_ref())
    }
}

/// Runs `serve` to completion on a new executor driven by `--threads`
/// threads (this one and the rest spawned), then drops whatever task is left.
pub fn block_on(
    cli: Cli,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let executor = Arc::new(Executor::new());
    let rt = Smol {
        start: Instant::now(),
        executor: executor.clone(),
    };
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let helpers = (1..roomcast_driver::threads(&cli))
        .map(|i| {
            let executor = executor.clone();
            let stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("roomcast-smol-{i}"))
                .spawn(move || smol::block_on(executor.run(stopped.recv())))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let result = smol::block_on(executor.run(roomcast_driver::serve(rt, cli, listener, shutdown)));
    drop(stop);
    for h in helpers {
        let _ = h.join();
    }
    drop(executor);
    result
}

/// Binds `cli.listen` and runs a node on a new thread until
/// [`Running::shutdown`].
pub fn start(cli: Cli) -> io::Result<Running> {
    Running::start(cli, "roomcast-smol", |cli, listener, stop| {
        block_on(cli, listener, async move { stop.stopped().await })
    })
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use async_signal::{Signal, Signals};
    use smol::stream::StreamExt;
    match Signals::new([Signal::Int, Signal::Term]) {
        Ok(mut signals) => {
            signals.next().await;
        }
        Err(_) => std::future::pending().await,
    }
}
