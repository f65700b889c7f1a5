//! Headers across the proxy: hop-by-hop ones (RFC 9110 section 7.6.1) are never forwarded
//! either way; requests gain X-Forwarded-For, X-Forwarded-Proto and Via, answers gain Via.
//! The client's Host is not sent: hyper sets the upstream's own (as nginx's default
//! `proxy_set_header Host $proxy_host`), so an origin sees the name it is known by.

use http::{header, HeaderMap, HeaderName, HeaderValue, Version};

/// Hop-by-hop headers: they describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the hop-by-hop headers, those `Connection` names among them, and every
/// `Proxy-*` header.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages have none, or only `Connection: keep-alive` (an origin's answer): one
    // look at each name, and a removal (a hash) only for what is there. The names
    // Connection lists are compared as text, not parsed into `HeaderName`s (which allocates
    // for any non-standard one).
    let hop = |k: &HeaderName| HOP_BY_HOP.contains(k) || k.as_str().starts_with("proxy-");
    let mut hops = h.keys().filter(|k| hop(k));
    match (hops.next(), hops.next()) {
        (None, _) => return,
        // The usual one: a lone `Connection: keep-alive` (or close), naming no header.
        (Some(k), None) if k == header::CONNECTION => {
            let mut values = h.get_all(header::CONNECTION).iter();
            if let (Some(v), None) = (values.next(), values.next()) {
                let v = v.as_bytes();
                if v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close") {
                    h.remove(header::CONNECTION);
                    return;
                }
            }
        }
        _ => {}
    }
    // What Connection names goes first, while it is still there to say: each name once,
    // compared with the keys there (a handful), so a long list costs its length times
    // that, however many of its names are there.
    let listed: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
    for name in listed
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let name = name.trim();
        let found = h
            .keys()
            .find(|k| *k != header::CONNECTION && k.as_str().eq_ignore_ascii_case(name))
            .cloned();
        if let Some(k) = found {
            h.remove(k);
        }
    }
    while let Some(k) = h.keys().find(|k| hop(k)).cloned() {
        h.remove(k);
    }
}

/// `Via`'s received-protocol for a version: "1.1", "2".
fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_09 => "0.9 tiergate",
        Version::HTTP_10 => "1.0 tiergate",
        Version::HTTP_2 => "2 tiergate",
        Version::HTTP_3 => "3 tiergate",
        _ => "1.1 tiergate",
    })
}

/// The headers a client's request goes to the origin with.
/// `peer`: the client's address as a header value (`ClientAddr`).
pub fn to_origin(client: &HeaderMap, version: Version, peer: Option<&HeaderValue>) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    if let Some(ip) = peer {
        // Appended to what earlier proxies said, as one list.
        let v = match client.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(before) => {
                HeaderValue::from_str(&format!("{before}, {}", ip.to_str().unwrap_or_default()))
                    .ok()
            }
            None => Some(ip.clone()),
        };
        if let Some(v) = v {
            h.insert(X_FORWARDED_FOR, v);
        }
    }
    // The scheme this hop was received over: tiergate's data port speaks plain HTTP.
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    h.append(header::VIA, via(version));
    h
}

/// The headers an origin's answer reaches the client (and the cache) with.
pub fn from_origin(origin: &mut HeaderMap) {
    strip_hop_by_hop(origin);
    origin.append(header::VIA, via(Version::HTTP_11));
}

/// The request as the cache sees it (for `CachePolicy` and Vary): the client's headers
/// without hop-by-hop ones and without Host, which is not part of the cache key (see
/// `super::store`).
pub fn for_cache(client: &HeaderMap) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "1"),
            ("x-secret", "1"),
            ("host", "client.example"),
            ("accept", "*/*"),
            ("x-forwarded-for", "10.0.0.1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = to_origin(
            &h,
            Version::HTTP_11,
            Some(&HeaderValue::from_static("192.0.2.7")),
        );
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "via", "x-forwarded-for", "x-forwarded-proto"],
            "{out:?}"
        );
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["via"], "1.1 tiergate");
    }

    #[test]
    fn a_lone_connection_header_goes_and_what_it_names_too() {
        for (connection, gone) in [
            ("keep-alive", false),
            ("Close", false),
            ("x-secret", true),
            ("keep-alive, x-secret", true),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert(header::ETAG, HeaderValue::from_static("\"v\""));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(header::CONNECTION), "{connection}");
            assert_eq!(!h.contains_key("x-secret"), gone, "{connection}");
            assert!(h.contains_key(header::ETAG), "{connection}");
        }
        // Two Connection fields: the slow path reads both.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }
}
