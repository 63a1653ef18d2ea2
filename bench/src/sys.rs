//! The operating-system side: file-descriptor limit, memory of the servers
//! under test, and TCP connections from chosen loopback sources.

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
    fn nofile_is_at_hard_limit() {
        let soft = raise_nofile().unwrap();
        assert!(soft >= 1024);
    }
}
