//! The `roomcast-tokio` binary. See `--help`.

fn main() -> std::process::ExitCode {
    roomcast_driver::main(|cli, listener| {
        roomcast_tokio::runtime(&cli)?.block_on(roomcast_tokio::serve(
            cli,
            listener,
            roomcast_tokio::shutdown_signal(),
        ))
    })
}
