//! Where a webhook may go (SSRF guard): https only, and never to loopback, private, link-local,
//! unique-local, CGNAT, cloud-metadata or other non-public addresses — checked when the
//! subscription is made and again, on the resolved addresses actually connected to, at delivery.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use url::Url;

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_URL_LEN: usize = 2048;

/// Why an address is not a public one; None when it is.
fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_loopback() => Some("loopback"),
        (169, 254, _) => Some("link-local or cloud metadata"),
        (10, _, _) | (192, 168, _) => Some("private"),
        (172, b, _) if (16..32).contains(&b) => Some("private"),
        (100, b, _) if (64..128).contains(&b) => Some("carrier-grade NAT"),
        (0, _, _) => Some("unspecified"),
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Some("reserved"),
        (198, b, _) if b == 18 || b == 19 => Some("reserved"),
        _ if a >= 224 => Some("multicast or reserved"),
        _ => None,
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let s = ip.segments();
    match s[0] {
        _ if ip.is_loopback() => Some("loopback"),
        _ if ip.is_unspecified() => Some("unspecified"),
        // ::a.b.c.d (deprecated IPv4-compatible)
        0 if s[1..6].iter().all(|&x| x == 0) => Some("reserved"),
        // NAT64 64:ff9b::/96 and 6to4 2002::/16 carry an IPv4 address.
        0x64 if s[1] == 0xff9b => v4_class(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8)),
        0x2002 => v4_class(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8)),
        x if x & 0xfe00 == 0xfc00 => Some("unique-local or cloud metadata"),
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),
        x if x & 0xffc0 == 0xfec0 => Some("site-local"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        0x2001 if s[1] == 0x0db8 => Some("documentation"),
        _ => None,
    }
}

/// Why we refuse to send to `ip`, or None if we may.
pub fn refusal(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let class = match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    };
    match class {
        Some("loopback") if allow_loopback => None,
        other => other,
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// Resolves `host` and insists every address is allowed (one bad answer refuses them all).
pub async fn resolve_allowed(host: &str, port: u16, allow_loopback: bool) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((bare, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(_)) => return Err(format!("the host {bare} cannot be resolved")),
            Err(_) => return Err(format!("resolving the host {bare} timed out")),
        },
    };
    if addrs.is_empty() {
        return Err(format!("the host {bare} has no addresses"));
    }
    for a in &addrs {
        if let Some(why) = refusal(a.ip(), allow_loopback) {
            return Err(format!("the host resolves to a {why} address, which webhooks may not call"));
        }
    }
    Ok(addrs)
}

/// A URL we may send to, with the addresses it resolved to. Errors are for the client to read.
pub async fn check_url(raw: &str, allow_loopback: bool) -> Result<(Url, Vec<SocketAddr>), String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(raw).map_err(|_| "not an absolute URL".to_string())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL has no host")?.to_string();
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback => {}
        _ => return Err("the URL must use https".into()),
    }
    let addrs = resolve_allowed(&host, port, allow_loopback).await?;
    if url.scheme() == "http" && !addrs.iter().all(|a| is_loopback(a.ip())) {
        return Err("the URL must use https".into());
    }
    Ok((url, addrs))
}

/// reqwest's resolver for deliveries: the addresses it hands back (and reqwest connects to) are
/// the ones just checked, so a DNS answer cannot change between the check and the connection.
struct CheckedResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (host, allow) = (name.as_str().to_string(), self.allow_loopback);
        Box::pin(async move {
            let addrs = resolve_allowed(&host, 0, allow).await.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// The delivery client: no redirects, no proxies, the checking resolver. One per loopback policy.
pub fn client(allow_loopback: bool) -> Result<reqwest::Client, String> {
    static STRICT: OnceLock<reqwest::Client> = OnceLock::new();
    static LOOPBACK: OnceLock<reqwest::Client> = OnceLock::new();
    let cell = if allow_loopback { &LOOPBACK } else { &STRICT };
    if let Some(c) = cell.get() {
        return Ok(c.clone());
    }
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(CheckedResolver { allow_loopback }))
        .user_agent(concat!("customer360-webhooks/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(cell.get_or_init(|| c).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        refusal(s.parse().unwrap(), false).is_some()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for a in [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
            "100.127.255.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
            "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a00:1::1", "ff02::1",
        ] {
            assert!(refused(a), "{a} should be refused");
        }
        for a in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!refused(a), "{a} should be allowed");
        }
    }

    #[test]
    fn loopback_only_when_allowed() {
        assert!(refusal("127.0.0.1".parse().unwrap(), true).is_none());
        assert!(refusal("::1".parse().unwrap(), true).is_none());
        assert!(refusal("10.0.0.1".parse().unwrap(), true).is_some());
        assert!(refusal("169.254.169.254".parse().unwrap(), true).is_some());
    }

    /// The delivery client checks names itself, on the addresses it then connects to.
    #[tokio::test]
    async fn the_delivery_client_will_not_connect_to_a_name_that_resolves_to_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let url = format!("http://localhost:{port}/");
        let refused = client(false).unwrap().post(&url).send().await;
        assert!(refused.is_err(), "a loopback name must be refused");
        let allowed = client(true).unwrap().post(&url).send().await.unwrap();
        assert_eq!(allowed.status().as_u16(), 204);
    }

    #[tokio::test]
    async fn urls_must_be_https_and_public() {
        assert!(check_url("http://example.com/hook", false).await.is_err());
        assert!(check_url("https://127.0.0.1/hook", false).await.is_err());
        assert!(check_url("https://[fd00:ec2::254]/latest", false).await.is_err());
        assert!(check_url("https://169.254.169.254/latest/meta-data", true).await.is_err());
        assert!(check_url("https://user:pw@8.8.8.8/", false).await.is_err());
        assert!(check_url("ftp://8.8.8.8/", false).await.is_err());
        assert!(check_url("https://8.8.8.8/hook", false).await.is_ok());
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check_url("http://127.0.0.1:9/hook", false).await.is_err());
        assert!(check_url("https://localhost/hook", false).await.is_err());
    }
}
