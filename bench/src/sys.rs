//! The operating-system side: file-descriptor limit, memory and CPU time of
//! the servers under test, and TCP connections from chosen loopback sources.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit and
/// returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                return Err(io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// A process's resident memory, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mem {
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS) in KiB.
    pub hwm_kib: u64,
}

pub fn read_mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time (user + system, every thread, live or ended) a process has used
/// so far, in seconds, from /proc/PID/stat (PID 0: this process); `None`
/// when it cannot be read. Resolution: one clock tick (usually 10 ms).
pub fn read_cpu_s(pid: u32) -> Option<f64> {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).ok()?;
    parse_cpu_ticks(&stat).map(|t| t as f64 / clock_ticks_per_s())
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command
/// name (field 2) is in parentheses and may hold spaces or parentheses, so
/// the fields are counted from its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after `)`
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's clock ticks per second (`_SC_CLK_TCK`), the unit of
/// /proc/PID/stat's times.
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The loopback source address for connection `i` when `sources` addresses
/// (127.0.0.1, 127.0.0.2, …) are used round-robin; `None` with one source
/// (the kernel picks as usual).
pub fn source_for(i: usize, sources: usize) -> Option<Ipv4Addr> {
    if sources <= 1 {
        return None;
    }
    let n = (i % sources) as u32 + 1;
    Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n))
}

/// Connects to `to`, first binding `from` (port chosen at connect time, so a
/// source address is not limited to one ephemeral range per destination).
pub async fn connect(to: SocketAddr, from: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let stream = match from {
        None => TcpStream::connect(to).await?,
        Some(ip) => {
            let socket = if to.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on a socket we own, with a c_int option.
            // Failure only means the port is chosen at bind time instead.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
            socket.connect(to).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin() {
        assert_eq!(source_for(5, 1), None);
        assert_eq!(source_for(0, 3), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_for(1, 3), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_for(5, 3), Some(Ipv4Addr::new(127, 0, 0, 3)));
    }

    #[test]
    fn own_memory_is_readable() {
        let m = read_mem(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
    }

    #[test]
    fn cpu_ticks_from_stat() {
        // Fields 14/15 (utime 700, stime 55) after a name with spaces and ')'.
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 500 0 0 0 700 55 0 0 20 0 3 0 10 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(755));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_time_grows() {
        // Spin until 30 ms of CPU show up (bounded by 10 s of wall time, so a
        // busy machine slows the test down instead of failing it).
        let before = read_cpu_s(0).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.03 && t.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
            after = read_cpu_s(std::process::id()).unwrap();
        }
        assert!(after - before >= 0.03, "{before} -> {after}");
        assert!(read_cpu_s(u32::MAX).is_none());
    }

    #[test]
    fn nofile_is_at_hard_limit() {
        let soft = raise_nofile().unwrap();
        assert!(soft >= 1024);
    }
}
