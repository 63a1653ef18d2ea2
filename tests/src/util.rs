//! Small helpers: waiting, unique names, free ports, child processes.

use std::io;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A name no other test in this process uses (rooms, temporary folders).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free TCP port on 127.0.0.1 outside the kernel's ephemeral range, so no
/// outgoing connection can take it between this check and its use. (Never
/// 6379: a Redis may run there and the tests must not touch it.)
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Prefer the 10,000 ports just below the ephemeral range.
    let (start, span) = if lo >= 12_000 {
        (lo - 10_000, 10_000)
    } else {
        (hi + 1, 65_535 - hi)
    };
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let base = NEXT.fetch_add(1, Ordering::Relaxed);
    for i in 0..span {
        let port = start + (seed.wrapping_add(base.wrapping_mul(7919)).wrapping_add(i)) % span;
        let port = port as u16;
        if port == 6379 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {start}..{}", start + span);
}

/// Spawns a child process that the kernel kills when the spawning thread
/// ends (`PR_SET_PDEATHSIG`), so a test process that dies or is killed
/// leaves no `redis-server` or `node` behind. Spawn from the scenario's own
/// thread, which outlives the child's owner.
pub fn spawn_child(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

pub(crate) fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a child we own and have not reaped.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({}, {sig}): {}",
        child.id(),
        io::Error::last_os_error()
    );
}

/// This process's resident set size in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// Called by a test that cannot run because a tool it needs is missing;
/// `why` says which, and how to install it. Under CI (the environment
/// variable `CI` set to anything but empty, `0` or `false`) it panics with
/// `why`: CI has every tool, so a missing one is a failure there. Elsewhere
/// it prints `SKIPPED: {why}` and returns, and the caller returns too.
pub fn skip_or_fail(why: &str) {
    skip_or_fail_in(is_ci(std::env::var_os("CI").as_deref()), why);
}

fn is_ci(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")))
}

fn skip_or_fail_in(ci: bool, why: &str) {
    if ci {
        panic!("CI is set, so this test may not skip: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::panic::catch_unwind;

    use super::{is_ci, skip_or_fail_in};

    #[test]
    fn ci_is_read_from_the_variable() {
        assert!(!is_ci(None));
        for off in ["", "0", "false", "FALSE"] {
            assert!(!is_ci(Some(OsStr::new(off))), "CI={off:?}");
        }
        for on in ["true", "1", "yes"] {
            assert!(is_ci(Some(OsStr::new(on))), "CI={on:?}");
        }
    }

    #[test]
    fn a_skip_fails_under_ci_and_only_there() {
        let failure = catch_unwind(|| skip_or_fail_in(true, "`tool` is not on PATH"))
            .expect_err("a skip under CI returned");
        let message = failure.downcast_ref::<String>().expect("a formatted panic");
        assert!(message.contains("`tool` is not on PATH"), "{message}");
        skip_or_fail_in(false, "`tool` is not on PATH");
    }
}
