//! The `roomcast-smol` binary. See `--help`.

fn main() -> std::process::ExitCode {
    roomcast_driver::main(|cli, listener| {
        roomcast_smol::block_on(cli, listener, roomcast_smol::shutdown_signal())
    })
}
