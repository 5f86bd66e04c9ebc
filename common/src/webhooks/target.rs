//! Where a delivery may go. A receiving URL is untrusted input: left unchecked, it would let a
//! tenant make chatq's workers call anything they can reach (the cloud metadata service, the
//! database, an admin port). So a URL must be `http(s)` with a host and no credentials, and
//! every address its host resolves to must be public: not private, loopback, link-local,
//! unspecified, multicast, shared (CGNAT), documentation, benchmarking, reserved, or IPv6
//! unique-local, nor an IPv6 form that embeds such an IPv4 address. An operator may allow
//! non-public targets (`CHATQ_WEBHOOK_ALLOW_PRIVATE_TARGETS`) for a private network or tests.
//!
//! The check runs when an endpoint is registered ([`check`]) and again on every delivery, on
//! the addresses actually connected to ([`resolve`], the workers' resolver), so a name that
//! resolves to a public address at registration and to a private one later (DNS rebinding)
//! is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// The longest URL an endpoint may have.
pub const MAX_URL_LEN: usize = 2048;
/// How long resolving a host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a URL may not receive deliveries; the message is fit for the tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{}", not_public(host, addr))]
    NotPublic { host: String, addr: IpAddr },
    #[error("'{0}' does not resolve to any address")]
    Unresolved(String),
}

fn not_public(host: &str, addr: &IpAddr) -> String {
    let what = if host.trim_matches(['[', ']']) == addr.to_string() {
        addr.to_string()
    } else {
        format!("'{host}' resolves to {addr}, which")
    };
    format!("{what} is not a public address; webhooks are only sent to public addresses")
}

/// Parses a URL and checks its shape: `http` or `https`, a host, no user name or password.
///
/// # Errors
/// [`TargetError::Invalid`], saying what is wrong.
pub fn parse(text: &str) -> Result<Url, TargetError> {
    if text.len() > MAX_URL_LEN {
        return Err(TargetError::Invalid(format!(
            "The URL is longer than {MAX_URL_LEN} characters."
        )));
    }
    let url = Url::parse(text)
        .map_err(|err| TargetError::Invalid(format!("'{text}' is not a valid URL: {err}.")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Invalid(format!(
            "The URL's scheme must be https or http, not '{}'.",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(TargetError::Invalid("The URL has no host.".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Invalid(
            "The URL may not carry a user name or password; authenticate deliveries with their signature."
                .into(),
        ));
    }
    Ok(url)
}

/// Checks that every address the URL's host resolves to may receive deliveries.
///
/// # Errors
/// The host does not resolve, or resolves to an address that is not public (unless allowed).
pub async fn check(url: &Url, allow_private: bool) -> Result<(), TargetError> {
    let port = url.port_or_known_default().unwrap_or(443);
    let host = url.host_str().unwrap_or_default();
    match url.host() {
        Some(Host::Ipv4(ip)) => allowed(host, IpAddr::V4(ip), allow_private),
        Some(Host::Ipv6(ip)) => allowed(host, IpAddr::V6(ip), allow_private),
        Some(Host::Domain(name)) => resolve(name, port, allow_private).await.map(drop),
        None => Err(TargetError::Invalid("The URL has no host.".into())),
    }
}

/// Resolves `host` and returns its addresses, if every one of them may receive deliveries.
///
/// # Errors
/// The host does not resolve (in time), or resolves to an address that is not public (unless
/// allowed).
pub async fn resolve(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)));
    let addrs: Vec<SocketAddr> = match lookup.await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(_)) | Err(_) => return Err(TargetError::Unresolved(host.to_owned())),
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolved(host.to_owned()));
    }
    for addr in &addrs {
        allowed(host, addr.ip(), allow_private)?;
    }
    Ok(addrs)
}

/// Whether a literal address may receive deliveries.
///
/// # Errors
/// [`TargetError::NotPublic`].
pub fn allowed(host: &str, addr: IpAddr, allow_private: bool) -> Result<(), TargetError> {
    if allow_private || is_public(addr) {
        Ok(())
    } else {
        Err(TargetError::NotPublic {
            host: host.to_owned(),
            addr,
        })
    }
}

/// Whether an address is on the public internet (the special-purpose registries of RFC 6890,
/// for IPv4 and IPv6, less the globally reachable blocks no receiver is on).
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                  // "this network", 0.0.0.0/8
        || a == 10                            // private
        || a == 127                           // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), 100.64.0.0/10
        || (a == 169 && b == 254)             // link-local (cloud metadata services)
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)     // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)     // documentation
        || (a == 192 && b == 88 && c == 99)   // 6to4 relay anycast
        || (a == 192 && b == 168)             // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)  // documentation
        || (a == 203 && b == 0 && c == 113)   // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let first = segments[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || (first & 0xff00) == 0xff00           // multicast
        || (first & 0xfe00) == 0xfc00           // unique local
        || (first & 0xffc0) == 0xfe80           // link-local
        || (first & 0xffc0) == 0xfec0           // site-local (deprecated)
        || (first == 0x2001 && segments[1] < 0x0200) // IETF protocol assignments, Teredo
        || (first == 0x2001 && segments[1] == 0x0db8) // documentation
        || first == 0x0100                      // discard-only, 100::/64
        || (first & 0xe000) != 0x2000) // outside global unicast 2000::/3
}

/// The IPv4 address an IPv6 one stands for: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5]
        && (s[5] == 0xffff || (s[5] == 0 && !ip.is_loopback() && !ip.is_unspecified()))
    {
        return Some(low());
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(low());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for addr in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!public(addr), "{addr} counted as public");
        }
    }

    #[test]
    fn public_addresses_are_public() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            assert!(public(addr), "{addr} counted as not public");
        }
    }

    #[test]
    fn a_url_must_be_http_with_a_host_and_no_credentials() {
        assert!(parse("https://example.com/hook").is_ok());
        assert!(parse("http://example.com:8080/hook?x=1").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "not a url",
            "https://",
        ] {
            assert!(
                matches!(parse(bad), Err(TargetError::Invalid(_))),
                "{bad} was accepted"
            );
        }
        assert!(parse(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let literal = parse("http://127.0.0.1:9/hook").unwrap();
        assert!(matches!(
            check(&literal, false).await,
            Err(TargetError::NotPublic { .. })
        ));
        assert!(check(&literal, true).await.is_ok());
        let named = parse("http://localhost:9/hook").unwrap();
        assert!(matches!(
            check(&named, false).await,
            Err(TargetError::NotPublic { .. })
        ));
        let mapped = parse("http://[::ffff:169.254.169.254]/").unwrap();
        assert!(check(&mapped, false).await.is_err());
    }
}
