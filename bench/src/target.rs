//! Target URL validation: load tests only ever aim at this machine.
//!
//! Accepted: `http://HOST[:PORT][/PATH[?QUERY]]` where HOST is `localhost` (taken as
//! 127.0.0.1, no DNS lookup), an IPv4 literal, or a bracketed IPv6 literal, and the
//! address is a loopback address (127.0.0.0/8, ::1) or one assigned to an interface
//! of this machine (checked by binding a UDP socket to it, which only succeeds for
//! local addresses). Refused with a clear error: other host names, remote or
//! unspecified (0.0.0.0, ::) or multicast addresses, `https`, user info, zone ids,
//! port 0. The port defaults to 80.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use crate::ConfigError;

/// A validated target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Value of the `Host` header (`127.0.0.1:8000`, `[::1]:8000`, `localhost:8000`).
    pub host_header: String,
    /// Path and query from the URL, when it had one other than `/`.
    pub path: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "http://{}{}",
            self.host_header,
            self.path.as_deref().unwrap_or("/")
        )
    }
}

fn bad(url: &str, why: &str) -> ConfigError {
    ConfigError::Url(format!("{url:?}: {why}"))
}

/// Parse and validate `url` (see the module docs for the rules).
pub fn parse_target(url: &str) -> Result<Target, ConfigError> {
    let lower = url
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("http://") {
        &url[7..]
    } else if lower.starts_with("https://") {
        return Err(bad(url, "https is not supported (plain HTTP/1.1 only)"));
    } else {
        return Err(bad(url, "expected http://HOST:PORT/PATH"));
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if tail.contains('#') {
        return Err(bad(url, "fragments are not allowed"));
    }
    if authority.contains('@') {
        return Err(bad(url, "user info is not allowed"));
    }
    let (host, port) = split_host_port(url, authority)?;
    let (ip, named) = if host.eq_ignore_ascii_case("localhost") {
        (IpAddr::V4(Ipv4Addr::LOCALHOST), true)
    } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if v6.contains('%') {
            return Err(bad(url, "IPv6 zone ids are not supported"));
        }
        let ip = v6.parse().map_err(|_| bad(url, "invalid IPv6 literal"))?;
        (IpAddr::V6(ip), false)
    } else {
        match host.parse::<Ipv4Addr>() {
            Ok(ip) => (IpAddr::V4(ip), false),
            Err(_) => {
                return Err(bad(
                    url,
                    "only localhost or an IP literal of this machine may be targeted \
                     (load tests must only target this machine; no DNS names)",
                ))
            }
        }
    };
    check_local(url, ip)?;
    let path = match tail {
        "" | "/" => None,
        t if t.starts_with('?') => Some(format!("/{t}")),
        t => Some(t.to_string()),
    };
    if let Some(p) = &path {
        crate::template::check_path(p)?;
    }
    let host_header = match (named, ip) {
        (true, _) => format!("localhost:{port}"),
        (false, IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        (false, IpAddr::V4(v4)) => format!("{v4}:{port}"),
    };
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header,
        path,
    })
}

fn split_host_port<'a>(url: &str, authority: &'a str) -> Result<(&'a str, u16), ConfigError> {
    if authority.is_empty() {
        return Err(bad(url, "missing host"));
    }
    // Bracketed IPv6: the port follows the closing bracket.
    let (host, port) = if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or_else(|| bad(url, "unclosed '[' in host"))?;
        let (h, p) = authority.split_at(close + 1);
        match p {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(port) => (h, Some(port)),
                None => return Err(bad(url, "garbage after IPv6 literal")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad(url, "port must be 1..=65535")),
            Ok(n) => n,
        },
    };
    Ok((host, port))
}

fn check_local(url: &str, ip: IpAddr) -> Result<(), ConfigError> {
    if ip.is_unspecified() {
        return Err(bad(
            url,
            "the unspecified address is not a destination (use 127.0.0.1 or [::1])",
        ));
    }
    if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(bad(url, "multicast and broadcast addresses are refused"));
    }
    if ip.is_loopback() {
        return Ok(());
    }
    // Binding succeeds only for an address assigned to this machine.
    match UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => Ok(()),
        Err(_) => Err(bad(
            url,
            "address is not on this machine (load tests must only target this machine)",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accepts_loopback_forms() {
        let t = parse_target("http://127.0.0.1:8000").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:8000");
        assert_eq!(t.path, None);
        assert_eq!(t.to_string(), "http://127.0.0.1:8000/");

        let t = parse_target("HTTP://[::1]:9/v1/completions?x=1").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.host_header, "[::1]:9");
        assert_eq!(t.path.as_deref(), Some("/v1/completions?x=1"));

        let t = parse_target("http://LocalHost:18555/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:18555".parse().unwrap());
        assert_eq!(t.host_header, "localhost:18555");
        assert_eq!(t.path, None);

        let t = parse_target("http://127.1.2.3").unwrap();
        assert_eq!(t.addr.port(), 80);
        let t = parse_target("http://[::1]?q").unwrap();
        assert_eq!((t.addr.port(), t.path.as_deref()), (80, Some("/?q")));
    }

    #[test]
    fn refuses_other_hosts_and_forms() {
        for (url, needle) in [
            ("http://example.com:80/", "this machine"),
            ("http://8.8.8.8:80/", "not on this machine"),
            ("http://192.0.2.1:80/", "not on this machine"),
            ("http://[2001:db8::1]:80/", "not on this machine"),
            ("http://0.0.0.0:80/", "unspecified"),
            ("http://[::]:80/", "unspecified"),
            ("http://224.0.0.1:80/", "multicast"),
            ("https://127.0.0.1:443/", "https"),
            ("ftp://127.0.0.1/", "expected http"),
            ("127.0.0.1:80", "expected http"),
            ("http://user@127.0.0.1:80/", "user info"),
            ("http://127.0.0.1:0/", "port"),
            ("http://127.0.0.1:70000/", "port"),
            ("http://127.0.0.1:x/", "port"),
            ("http://[::1/", "unclosed"),
            ("http://[::1]x/", "garbage"),
            ("http://[fe80::1%eth0]:80/", "zone"),
            ("http:///path", "missing host"),
            ("http://127.0.0.1:80/a#frag", "fragment"),
            ("http://127.0.0.1:80/a b", "path"),
            ("http://127.0.0.01.5:80/", "this machine"),
        ] {
            let e = parse_target(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
    }
}
