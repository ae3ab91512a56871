//! Opening authenticated WebSocket connections from chosen 127.x.y.z source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// Boxed error for the generator's I/O paths.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where to connect: a parsed `ws://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The resolved address.
    pub addr: SocketAddr,
    /// `host:port` as written, for the request.
    pub authority: String,
    /// The path (e.g. `/ws`).
    pub path: String,
}

impl Target {
    /// Parses a `ws://` URL (no TLS: load tests run over loopback).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let path = path.split('?').next().unwrap_or("/ws");
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: no address"))?;
        Ok(Target {
            addr,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// Whether the target is an IPv4 loopback address, so that many 127.x.y.z source
    /// addresses can reach it.
    pub fn is_loopback_v4(&self) -> bool {
        matches!(self.addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
    }
}

/// The source address of connection `i` when each source address carries at most
/// `per_ip` of `total` connections: connections go round-robin over
/// `ceil(total / per_ip)` addresses 127.0.0.1, 127.0.0.2, ... 127.0.0.254, 127.0.1.1, ...
///
/// `base` shifts the block of addresses, so that two runs in one invocation (server,
/// then floor) do not share source ports.
pub fn source_ip(i: usize, total: usize, per_ip: usize, base: usize) -> Ipv4Addr {
    let n_ips = total.div_ceil(per_ip.max(1)).max(1);
    let j = i % n_ips + base;
    let third = (j / 254) % 256;
    let fourth = j % 254 + 1;
    Ipv4Addr::new(127, 0, third as u8, fourth as u8)
}

/// First source port [`source_addr`] hands out: below the kernel's ephemeral range
/// (32768 and up here), so no connection the kernel numbers itself takes one.
const FIRST_SOURCE_PORT: usize = 10_000;
/// Source ports per address that [`source_addr`] hands out.
const SOURCE_PORTS: usize = 22_000;

/// The source address and port of connection `i` (see [`source_ip`] for the address).
/// Each connection gets its own port, chosen here: with `bind(ip, 0)` the kernel
/// searches the port range for one that is free on `ip`, and once a previous run's
/// connections from the same addresses sat in TIME_WAIT that search made connects
/// ~15x slower (about 9 000 connections in the first second, then ~500/s) in every run
/// but the first of a series. Port 0 (the kernel's choice) past `SOURCE_PORTS`
/// connections per address.
pub fn source_addr(i: usize, total: usize, per_ip: usize, base: usize) -> SocketAddrV4 {
    let ip = source_ip(i, total, per_ip, base);
    let n_ips = total.div_ceil(per_ip.max(1)).max(1);
    let k = i / n_ips;
    let port = if k < SOURCE_PORTS {
        u16::try_from(FIRST_SOURCE_PORT + k).unwrap_or(0)
    } else {
        0
    };
    SocketAddrV4::new(ip, port)
}

/// WebSocket settings for a generator connection: small buffers for idle connections
/// (tungstenite's defaults allocate 128 KiB each), larger ones for traffic.
pub fn ws_config(busy: bool) -> WebSocketConfig {
    let (read, write) = if busy {
        (64 * 1024, 16 * 1024)
    } else {
        (4 * 1024, 0)
    };
    WebSocketConfig::default()
        .read_buffer_size(read)
        .write_buffer_size(write)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Connects as `user` (dev auth: the token is the user id), from `source` if given, and
/// reads the `welcome` frame. Fails if the server refuses or sends something else first.
pub async fn connect(
    target: &Target,
    user: &str,
    source: Option<SocketAddrV4>,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<Ws, BoxError> {
    tokio::time::timeout(timeout, connect_inner(target, user, source, config))
        .await
        .map_err(|_| -> BoxError { format!("connect timed out after {timeout:?}").into() })?
}

/// A TCP connection to `target` from `source` (address and port; the port left to the
/// kernel if that one cannot be used: another socket holds it, or its connection to
/// `target` is still in TIME_WAIT).
async fn tcp_connect(target: &Target, source: Option<SocketAddrV4>) -> std::io::Result<TcpStream> {
    let Some(src) = source.filter(|_| target.addr.is_ipv4()) else {
        return match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        }
        .connect(target.addr)
        .await;
    };
    let from = |port| -> std::io::Result<TcpSocket> {
        let socket = TcpSocket::new_v4()?;
        // A port still in TIME_WAIT from an earlier run may be bound again.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(IpAddr::V4(*src.ip()), port))?;
        Ok(socket)
    };
    if src.port() != 0 {
        let chosen = match from(src.port()) {
            Ok(socket) => socket.connect(target.addr).await,
            Err(e) => Err(e),
        };
        match chosen {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                ) => {}
            other => return other,
        }
    }
    from(0)?.connect(target.addr).await
}

async fn connect_inner(
    target: &Target,
    user: &str,
    source: Option<SocketAddrV4>,
    config: WebSocketConfig,
) -> Result<Ws, BoxError> {
    let tcp = tcp_connect(target, source).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{}{}?token={}", target.authority, target.path, user);
    let request = url.into_client_request()?;
    let (mut ws, _resp) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let f = crate::proto::Lite::decode(t.as_str())?;
                if f.ty == "welcome" {
                    return Ok(ws);
                }
                return Err(format!("expected welcome, got {}", t.as_str()).into());
            }
            Some(Ok(Message::Close(c))) => {
                return Err(format!("closed before welcome: {c:?}").into())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection ended before welcome".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").expect("parse");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(t.path, "/ws");
        assert!(t.is_loopback_v4());
        let t = Target::parse("ws://127.0.0.1:9/other?x=1").expect("parse");
        assert_eq!(t.path, "/other");
        assert!(Target::parse("http://127.0.0.1:8080/ws").is_err());
        assert!(Target::parse("wss://127.0.0.1:8080/ws").is_err());
    }

    #[test]
    fn spreads_connections_over_source_addresses() {
        // Few connections: all from 127.0.0.1.
        assert_eq!(source_ip(5, 100, 20_000, 0), Ipv4Addr::new(127, 0, 0, 1));
        // 100k at 20k per address: 5 addresses, round-robin.
        let total = 100_000;
        let mut counts = std::collections::HashMap::new();
        for i in 0..total {
            *counts.entry(source_ip(i, total, 20_000, 0)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 5);
        assert!(counts.values().all(|&c| c <= 20_000));
        // 1M at 20k: 50 addresses; beyond 254 the third octet moves.
        assert_eq!(
            source_ip(254, 10_000_000, 1, 0),
            Ipv4Addr::new(127, 0, 1, 1)
        );
        // A base moves the whole block.
        assert_eq!(
            source_ip(0, 10, 20_000, 128 * 254),
            Ipv4Addr::new(127, 0, 128, 1)
        );
    }

    #[test]
    fn every_connection_gets_its_own_source_port() {
        let total = 19_000;
        let addrs: std::collections::HashSet<SocketAddrV4> = (0..total)
            .map(|i| source_addr(i, total, 5_000, 0))
            .collect();
        assert_eq!(addrs.len(), total);
        assert!(addrs.iter().all(|a| (10_000..15_000).contains(&a.port())));
        // Past the ports it hands out, the kernel chooses.
        assert_eq!(source_addr(22_000, 22_001, 1_000_000, 0).port(), 0);
    }
}
