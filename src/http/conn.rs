//! What the transport does with a TCP connection before any protocol: socket options that bound
//! what one peer can pin in the kernel, a count of every open socket, the client's address
//! (behind trusted proxies) and the per-address WebSocket limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

use confab_actors::error::{Error, ErrorCode};
use confab_actors::limits::{Keyed, RateConfig};
use confab_actors::metrics::Metrics;

/// Socket options applied to every accepted connection (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    /// `SO_SNDBUF`: the kernel's send buffer for one connection (Linux doubles it). A peer that
    /// does not read pins at most this much kernel memory. `None`: the kernel's autotuning (up to
    /// `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default).
    pub send_buffer: Option<usize>,
    /// `TCP_USER_TIMEOUT`: a connection whose peer acknowledges nothing, or keeps its receive
    /// window shut, for this long while data waits to be sent is aborted by the kernel. This is
    /// the write timeout of a client that stopped reading, including after the server closed it
    /// (1013): its socket does not stay open waiting to flush.
    pub write_timeout: Option<Duration>,
    /// `TCP_NODELAY`: a frame leaves when it is written, instead of waiting (Nagle's algorithm)
    /// for the peer to acknowledge the previous one, which clients delay by up to 40 ms.
    pub nodelay: bool,
}

impl SocketOptions {
    /// The socket options of `[server]`.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        SocketOptions {
            send_buffer: (cfg.server.send_buffer_bytes > 0).then_some(cfg.server.send_buffer_bytes),
            write_timeout: (cfg.server.write_timeout_secs > 0)
                .then(|| Duration::from_secs(cfg.server.write_timeout_secs)),
            nodelay: cfg.server.tcp_nodelay,
        }
    }
}

/// Counts one open socket for as long as the connection lives (dropped with actix-http's
/// per-connection data).
struct SocketGuard(Arc<Metrics>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.sockets_open.fetch_sub(1, Relaxed);
    }
}

/// `HttpServer::on_connect`: applies `opts` to the new connection and counts it.
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut Extensions, opts: SocketOptions, metrics: &Arc<Metrics>) {
    metrics.sockets_open.fetch_add(1, Relaxed);
    metrics.sockets_total.fetch_add(1, Relaxed);
    ext.insert(Arc::new(SocketGuard(metrics.clone())));
    let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else { return };
    if let Err(e) = tcp.set_nodelay(opts.nodelay) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let sock = socket2::SockRef::from(tcp);
    if let Some(n) = opts.send_buffer {
        if let Err(e) = sock.set_send_buffer_size(n) {
            tracing::debug!(error = %e, "cannot set SO_SNDBUF");
        }
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(t) = opts.write_timeout {
        if let Err(e) = sock.set_tcp_user_timeout(Some(t)) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

/// Which peers are proxies whose `X-Forwarded-For` is believed (`server.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses addresses and networks (`10.0.0.0/8`, `::1`, `192.168.1.7`).
    pub fn parse(list: &[String]) -> Result<Self, String> {
        crate::config::networks(list).map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, bits)| in_network(ip, *net, *bits))
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
    /// address of `X-Forwarded-For` that is not a trusted proxy (the left-most ones are whatever
    /// the client wrote).
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for value in req.headers().get_all("x-forwarded-for") {
            let Ok(v) = value.to_str() else { continue };
            for hop in v.split(',').rev() {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) if self.trusts(ip) => client = ip,
                    Ok(ip) => return Some(ip),
                    Err(_) => return Some(client),
                }
            }
        }
        Some(client)
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a.to_ipv4_mapped().is_some_and(|a| in_network(IpAddr::V4(a), net, bits)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// WebSocket connections per client address: the rate they are opened at and how many are open.
pub struct IpLimits {
    opened: Keyed<IpAddr>,
    max_open: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count; given back when dropped (the session holds it).
pub struct IpSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl IpLimits {
    pub fn new(cfg: &RateConfig) -> Self {
        IpLimits {
            opened: Keyed::new(cfg.connections_per_ip, "connections opened from this address"),
            max_open: cfg.max_connections_per_ip,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admits one more connection from `ip`, or refuses it with `rate_limited`.
    pub fn admit(&self, ip: IpAddr) -> Result<IpSlot, Error> {
        {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if self.max_open > 0 && open.get(&ip).copied().unwrap_or(0) >= self.max_open {
                return Err(Error::new(
                    ErrorCode::RateLimited,
                    format!("at most {} connections may be open from one address", self.max_open),
                ));
            }
        }
        self.opened.check(&ip, 1)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        *open.entry(ip).or_default() += 1;
        Ok(IpSlot { ip, open: self.open.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into(), "192.168.1.7".into()]).unwrap();
        assert!(t.trusts("10.1.2.3".parse().unwrap()));
        assert!(!t.trusts("11.1.2.3".parse().unwrap()));
        assert!(t.trusts("::1".parse().unwrap()));
        assert!(t.trusts("192.168.1.7".parse().unwrap()));
        assert!(!t.trusts("192.168.1.8".parse().unwrap()));
        assert!(t.trusts("::ffff:10.9.9.9".parse().unwrap()), "IPv4-mapped IPv6");
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy".into()]).is_err());
    }

    /// What every accepted connection gets: `on_connect` is the server's only place for it.
    #[actix_web::test]
    async fn accepted_sockets_get_the_configured_options() {
        let listener = actix_web::rt::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        for nodelay in [true, false] {
            let client = actix_web::rt::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let opts = SocketOptions { send_buffer: Some(65536), write_timeout: Some(Duration::from_secs(7)), nodelay };
            let mut ext = Extensions::new();
            on_connect(&server, &mut ext, opts, &metrics);
            assert_eq!(server.nodelay().unwrap(), nodelay);
            let sock = socket2::SockRef::from(&server);
            assert!(sock.send_buffer_size().unwrap() >= 65536, "Linux doubles it");
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(sock.tcp_user_timeout().unwrap(), Some(Duration::from_secs(7)));
            drop(client);
        }
        assert_eq!(metrics.sockets_total.load(Relaxed), 2);
    }

    #[test]
    fn per_address_counts_are_given_back() {
        let limits = IpLimits::new(&RateConfig { max_connections_per_ip: 2, ..RateConfig::OFF });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        assert_eq!(limits.admit(ip).err().map(|e| e.code), Some(ErrorCode::RateLimited));
        assert!(limits.admit("127.0.0.2".parse().unwrap()).is_ok(), "another address");
        drop(a);
        assert!(limits.admit(ip).is_ok(), "a closed connection's place is free again");
    }
}
