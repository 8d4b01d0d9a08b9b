//! HTTP/1.1 message heads: parsing a request or response head out of a buffer (with
//! `httparse`, as pingora does) into pingora's header types, deciding the body's framing once
//! (RFC 9112 section 6), and writing a head back out.
//!
//! The framing rules are strict, because a proxy and its upstream must never disagree on
//! where a request ends (request smuggling): `Transfer-Encoding` with `Content-Length` is
//! refused, as is any transfer coding other than a final `chunked`, a `Content-Length` that
//! is not a plain number or whose copies differ, `Transfer-Encoding` in HTTP/1.0, a missing
//! `Host` in HTTP/1.1, and targets that are not origin-form (absolute-form is accepted and
//! forwarded in origin-form; `*` only with OPTIONS; CONNECT is not proxied).

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Version};
use pingora_http::{RequestHeader, ResponseHeader};

/// Most header fields in one head (more is a 431, like nginx's large header limits).
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a request head cannot be served, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 400, 414, 431, 501 or 505.
    pub status: u16,
    /// What was wrong, for the error body and the log.
    pub reason: String,
}

fn refused(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    /// Method, target (origin-form), version and fields.
    pub head: RequestHeader,
    /// Bytes of the head in the buffer (the body, if any, starts there).
    pub head_len: usize,
    /// The body's framing.
    pub body: Framing,
    /// The client asked for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// The connection may serve another request after this one (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// An upgrade request (`Connection: upgrade` and `Upgrade`, HTTP/1.1).
    pub upgrade: bool,
    /// Which field names the head holds.
    pub names: NameSet,
}

/// Whether a `Connection` field lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The single value of `Content-Length` fields (`5`, or `5, 5` and repeated fields with the
/// same value); `Err` when malformed or conflicting.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("invalid Content-Length")?;
            match found {
                Some(prev) if prev != n => return Err("conflicting Content-Length values"),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Whether `Transfer-Encoding` says exactly `chunked` (one field, one coding). `Err(status)`
/// for anything else: 501 for a coding Portico does not implement, 400 for malformed values.
fn chunked_only(headers: &HeaderMap) -> Result<bool, Refused> {
    let mut fields = headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = fields.next() else {
        return Ok(false);
    };
    if fields.next().is_some() {
        return Err(refused(400, "several Transfer-Encoding fields"));
    }
    let v = first.as_bytes().trim_ascii();
    if v.eq_ignore_ascii_case(b"chunked") {
        return Ok(true);
    }
    let last = v.rsplit(|&b| b == b',').next().unwrap_or(v).trim_ascii();
    if !last.eq_ignore_ascii_case(b"chunked") {
        return Err(refused(400, "Transfer-Encoding must end with chunked"));
    }
    Err(refused(
        501,
        "transfer codings other than chunked are not implemented",
    ))
}

/// The fields of a request head that framing and connection handling look at.
#[derive(Default)]
struct Seen {
    host: usize,
    content_length: usize,
    transfer_encoding: bool,
    connection: bool,
    upgrade: bool,
    expect: bool,
}

impl Seen {
    fn note(&mut self, name: &http::HeaderName) {
        if name == HOST {
            self.host += 1;
        } else if name == CONTENT_LENGTH {
            self.content_length += 1;
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == CONNECTION {
            self.connection = true;
        } else if name == UPGRADE {
            self.upgrade = true;
        } else if name == EXPECT {
            self.expect = true;
        }
    }
}

pub(crate) use crate::proxy::names::is_name;
use crate::proxy::names::NameSet;

/// The common name `raw` is, if it is one (see [`crate::proxy::names`]).
#[cfg(test)]
fn common_name(raw: &[u8]) -> Option<http::HeaderName> {
    crate::proxy::names::common(raw).map(|(n, _)| n.clone())
}

/// Whether `host` holds only the bytes a Host value may (RFC 3986 `reg-name`, an IP literal
/// in brackets, a port): one table lookup per byte.
fn valid_host(host: &[u8]) -> bool {
    static ALLOWED: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = (i as u8).is_ascii_alphanumeric();
            i += 1;
        }
        let extra = b"-._~:[]%!$&'()*+,;=";
        let mut j = 0;
        while j < extra.len() {
            t[extra[j] as usize] = true;
            j += 1;
        }
        t
    };
    host.iter().all(|&b| ALLOWED[b as usize])
}

thread_local! {
    /// Header maps of finished requests, emptied, for the next requests on this worker
    /// thread: a map is two allocations (its index and its entries). Per thread rather than
    /// per connection, so an idle keep-alive connection holds none.
    static SPARE_FIELDS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Most emptied maps a worker thread keeps.
const SPARE_MAPS: usize = 64;

/// An empty header map with room for `n` fields: a spare one when the thread has one.
fn spare_fields(n: usize) -> HeaderMap {
    match SPARE_FIELDS.with(|s| s.borrow_mut().pop()) {
        Some(mut m) => {
            // `n` is at most MAX_HEADERS: room for it cannot fail.
            let _ = m.try_reserve(n);
            m
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Gives a finished request's header map back for reuse (emptied here; its values, slices
/// of a read buffer, are released now). Maps grown past the field limit are dropped.
pub fn recycle_fields(mut m: HeaderMap) {
    if m.capacity() > MAX_HEADERS {
        return;
    }
    m.clear();
    SPARE_FIELDS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_MAPS {
            s.push(m);
        }
    });
}

/// `s` as a slice of `buf` when it lies inside it, else a copy: a target rebuilt by the
/// parser (an absolute-form target without a path becomes a static "/") lies elsewhere,
/// and `Bytes::slice_ref` would panic on it.
fn slice_of(buf: &Bytes, s: &[u8]) -> Bytes {
    let base = buf.as_ptr() as usize;
    let at = s.as_ptr() as usize;
    if at >= base && at + s.len() <= base + buf.len() {
        buf.slice_ref(s)
    } else {
        Bytes::copy_from_slice(s)
    }
}

/// Room for the fields httparse finds, left uninitialised: filling a hundred empty fields
/// first cost about 300 instructions per head (callgrind); httparse writes the ones it uses.
fn no_fields<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Longest request target accepted (414 beyond it), as nginx's default 8 KiB line buffer.
pub const MAX_TARGET: usize = 8 * 1024;

/// Parses a complete request head at the start of `buf`, for callers that hold only a
/// borrowed buffer (tests, fuzz targets): `buf` is copied once, then as
/// [`parse_request_shared`]. `max_target` bounds the request target (414 beyond it).
pub fn parse_request(buf: &[u8], max_target: usize) -> Result<Request, Refused> {
    parse_request_shared(&Bytes::copy_from_slice(buf), max_target)
}

/// Parses a complete request head at the start of `buf`, as [`parse_request`]. The field
/// values and the target are slices of `buf`, not copies: a request's five or so values
/// were five allocations, copies and frees (about 400 instructions by callgrind). They
/// keep `buf`'s allocation (the connection's read buffer) alive until the request is
/// dropped, which the read buffer waits for before it reuses its space.
pub fn parse_request_shared(buf: &Bytes, max_target: usize) -> Result<Request, Refused> {
    let mut fields = no_fields();
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(refused(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refused(
                431,
                format!("more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(refused(
                400,
                "malformed request line or unsupported HTTP version",
            ))
        }
        Err(e) => return Err(refused(400, format!("malformed request head: {e}"))),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(refused(400, "malformed request line"));
    };
    if target.len() > max_target {
        return Err(refused(
            414,
            format!("request target longer than {max_target} bytes"),
        ));
    }
    // Only visible ASCII (RFC 9112 section 3.2, RFC 3986): raw UTF-8 or control bytes in
    // the target are refused, not passed on for each backend to read its own way.
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refused(
            400,
            "the request target must be visible ASCII (percent-encode other bytes)",
        ));
    }
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let method: Method = method.parse().map_err(|_| refused(400, "invalid method"))?;
    if method == Method::CONNECT {
        return Err(refused(405, "CONNECT is not proxied"));
    }
    // Request target forms (RFC 9112 section 3.2).
    let mut absolute_host: Option<&str> = None;
    let path: &str = if target.starts_with('/') {
        target
    } else if target == "*" {
        if method != Method::OPTIONS {
            return Err(refused(400, "asterisk-form target outside OPTIONS"));
        }
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(refused(400, "invalid absolute-form target"));
        }
        absolute_host = Some(authority);
        if path.starts_with('?') {
            return Err(refused(400, "invalid absolute-form target"));
        }
        path
    } else {
        return Err(refused(
            400,
            "request target must be origin-form (start with '/')",
        ));
    };
    // The fields go straight into the header map. `RequestHeader::append_header` would
    // title-case each name for a case map this head does not keep and parse it again (half
    // of this function's instructions under callgrind); a target that the URI type keeps
    // byte for byte needs nothing more than the map, others keep their raw bytes.
    let mut fields = spare_fields(req.headers.len());
    // Which framing and connection fields are present, noted on the way (a standard name
    // compares as a tag), so the common request skips their map lookups below.
    let mut seen = Seen::default();
    let mut names = NameSet::empty();
    for f in req.headers.iter() {
        let raw = f.name.as_bytes();
        let common = crate::proxy::names::common(raw);
        names.note(common.map(|(_, bit)| bit));
        let name = match common {
            Some((n, _)) => n.clone(),
            None => http::HeaderName::from_bytes(raw)
                .map_err(|_| refused(400, "invalid header name"))?,
        };
        let value = http::HeaderValue::from_maybe_shared(slice_of(buf, f.value))
            .map_err(|_| refused(400, "invalid header value"))?;
        seen.note(&name);
        if name == HOST && !valid_host(f.value) {
            return Err(refused(400, "invalid Host"));
        }
        fields
            .try_append(name, value)
            .map_err(|_| refused(400, "invalid header"))?;
    }
    let exact_uri = http::Uri::from_maybe_shared(slice_of(buf, path.as_bytes()))
        .ok()
        .filter(|u| u.path_and_query().map(|p| p.as_str()) == Some(path));
    let mut head = match exact_uri {
        Some(uri) => {
            let (mut parts, ()) = http::Request::new(()).into_parts();
            parts.method = method;
            parts.uri = uri;
            parts.version = version;
            parts.headers = fields;
            RequestHeader::from(parts)
        }
        None => {
            let mut head =
                RequestHeader::build_no_case(method, path.as_bytes(), Some(fields.len()))
                    .map_err(|_| refused(400, "invalid request target"))?;
            head.set_version(version);
            // A map's iterator names a field once for all its values.
            let mut last: Option<http::HeaderName> = None;
            for (name, value) in fields {
                if name.is_some() {
                    last = name;
                }
                if let Some(name) = &last {
                    head.append_header(name.clone(), value)
                        .map_err(|_| refused(400, "invalid header"))?;
                }
            }
            head
        }
    };
    // Host (RFC 9112 section 3.2): required in HTTP/1.1, exactly once; an absolute-form
    // target's authority replaces it.
    let hosts = seen.host;
    if hosts > 1 {
        return Err(refused(400, "several Host fields"));
    }
    if let Some(authority) = absolute_host {
        head.insert_header(HOST, authority)
            .map_err(|_| refused(400, "invalid absolute-form authority"))?;
        names.note(crate::proxy::names::common(b"host").map(|(_, bit)| bit));
    } else if hosts == 0 && version == Version::HTTP_11 {
        return Err(refused(400, "an HTTP/1.1 request needs a Host field"));
    }
    // Each Host value was checked as it went into the map; an absolute-form authority here.
    if absolute_host.is_some_and(|a| !valid_host(a.as_bytes())) {
        return Err(refused(400, "invalid Host"));
    }
    let h = &head.headers;
    let chunked = seen.transfer_encoding && chunked_only(h)?;
    let length = if seen.content_length > 0 {
        content_length(h).map_err(|e| refused(400, e))?
    } else {
        None
    };
    let body = match (chunked, length) {
        (true, Some(_)) => {
            return Err(refused(
                400,
                "Transfer-Encoding and Content-Length together",
            ))
        }
        (true, None) if version == Version::HTTP_10 => {
            return Err(refused(400, "Transfer-Encoding in an HTTP/1.0 request"))
        }
        (true, None) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    // Identical duplicates are collapsed, so the upstream sees one.
    if seen.content_length > 1 || length.is_some() {
        if let Some(n) = length {
            head.insert_header(CONTENT_LENGTH, n)
                .map_err(|_| refused(400, "invalid Content-Length"))?;
        }
    }
    let h = &head.headers;
    let expect_continue = seen.expect
        && h.get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let keep_alive = if version == Version::HTTP_11 {
        !(seen.connection && connection_has(h, "close"))
    } else {
        seen.connection && connection_has(h, "keep-alive")
    };
    let upgrade = version == Version::HTTP_11
        && seen.upgrade
        && seen.connection
        && connection_has(h, "upgrade");
    Ok(Request {
        head,
        head_len,
        body,
        expect_continue,
        keep_alive,
        upgrade,
        names,
    })
}

/// Start and end of a slice of the buffer a head was parsed from.
type Span = (u32, u32);

/// A response head as it arrived: offsets of its fields in the buffer, so the common answer
/// can be forwarded without building a header map (one is built only when a decision needs
/// one, such as reading a fly-replay instruction).
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// HTTP/1.x minor version.
    pub minor: u8,
    /// Bytes of the head in the buffer.
    pub head_len: usize,
    /// The reason phrase.
    reason: Span,
    /// Field names and values, as offsets into the buffer.
    fields: smallvec::SmallVec<[(Span, Span); 24]>,
    /// The body's framing, given the request method.
    pub body: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
    /// The fields that may carry a fly-replay instruction, noted while parsing so the
    /// response path does not scan the fields again for them.
    pub replay_markers: ReplayMarkers,
}

/// Which fly-replay carriers a response has (see [`Response::replay_markers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayMarkers {
    /// A `fly-replay` field.
    pub header: bool,
    /// A `Content-Type` of the JSON instruction form.
    pub json: bool,
    /// A `fly-replay-cache` field.
    pub cache: bool,
}

impl Response {
    /// The fields as `(name, value)` byte slices of `buf` (the buffer it was parsed from).
    pub fn fields<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.fields.iter().map(move |&((ns, ne), (vs, ve))| {
            (
                &buf[ns as usize..ne as usize],
                &buf[vs as usize..ve as usize],
            )
        })
    }

    /// The first value of field `name` (lower case).
    pub fn get<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.fields.iter().find_map(|&((ns, ne), (vs, ve))| {
            buf[ns as usize..ne as usize]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| &buf[vs as usize..ve as usize])
        })
    }

    /// The reason phrase.
    pub fn reason<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.reason.0 as usize..self.reason.1 as usize]
    }

    /// The head as pingora's type, for decisions that need a header map.
    pub fn to_header(&self, buf: &[u8]) -> Result<ResponseHeader, BadResponse> {
        let mut head = ResponseHeader::build_no_case(self.status, Some(self.fields.len()))
            .map_err(|_| BadResponse(format!("invalid status {}", self.status)))?;
        head.set_version(if self.minor == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        });
        for (n, v) in self.fields(buf) {
            let name = http::HeaderName::from_bytes(n)
                .map_err(|_| BadResponse("invalid header name".into()))?;
            let value = http::HeaderValue::from_bytes(v)
                .map_err(|_| BadResponse("invalid header value".into()))?;
            head.append_header(name, value)
                .map_err(|_| BadResponse("invalid header".into()))?;
        }
        Ok(head)
    }
}

/// Why a response head is unusable (the answer to the client is a 502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadResponse(pub String);

/// Parses a response head at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_response(buf: &[u8], method: &Method) -> Result<Option<Response>, BadResponse> {
    let mut raw = no_fields();
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(BadResponse(format!("malformed response head: {e}"))),
    };
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err(BadResponse("malformed status line".into()));
    };
    if !(100..=999).contains(&code) {
        return Err(BadResponse(format!("invalid status {code}")));
    }
    let base = buf.as_ptr() as usize;
    let end = base + buf.len();
    // Where a slice httparse returned lies in `buf`. An empty one may point elsewhere (an
    // empty reason phrase is a static ""), found by the fuzz targets: it becomes (0, 0).
    let span = |s: &[u8]| {
        let at = s.as_ptr() as usize;
        if s.is_empty() || at < base || at + s.len() > end {
            return (0, 0);
        }
        let start = (at - base) as u32;
        (start, start + s.len() as u32)
    };
    let reason = resp.reason.map_or((0, 0), |r| span(r.as_bytes()));
    let mut fields = smallvec::SmallVec::new();
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut close = false;
    let mut keep = false;
    let mut markers = ReplayMarkers::default();
    for f in resp.headers.iter() {
        let name = f.name.as_bytes();
        fields.push((span(name), span(f.value)));
        if is_name(name, b"fly-replay") {
            markers.header = true;
        } else if is_name(name, b"fly-replay-cache") {
            markers.cache = true;
        } else if is_name(name, b"content-type") {
            let json = crate::replay::JSON_CONTENT_TYPE.as_bytes();
            markers.json |=
                f.value.len() >= json.len() && f.value[..json.len()].eq_ignore_ascii_case(json);
        } else if is_name(name, b"content-length") {
            for part in f.value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
                    return Err(BadResponse("invalid Content-Length".into()));
                }
                let n: u64 = std::str::from_utf8(part)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| BadResponse("invalid Content-Length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadResponse("conflicting Content-Length values".into()));
                }
                length = Some(n);
            }
        } else if is_name(name, b"transfer-encoding") {
            te = Some(f.value);
            te_count += 1;
        } else if is_name(name, b"connection") {
            for t in f.value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    if te.is_some() && length.is_some() {
        return Err(BadResponse(
            "Transfer-Encoding and Content-Length together".into(),
        ));
    }
    let chunked = match te {
        None => false,
        Some(_) if te_count > 1 => {
            return Err(BadResponse("several Transfer-Encoding fields".into()))
        }
        Some(v) if v.trim_ascii().eq_ignore_ascii_case(b"chunked") => true,
        Some(_) => return Err(BadResponse("transfer codings other than chunked".into())),
    };
    let no_body =
        *method == Method::HEAD || (100..200).contains(&code) || code == 204 || code == 304;
    let body = if no_body {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = body != Framing::Close && if minor == 1 { !close } else { keep };
    Ok(Some(Response {
        status: code,
        minor,
        head_len,
        reason,
        fields,
        body,
        keep_alive,
        replay_markers: markers,
    }))
}

/// Writes a field line.
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes a status line.
pub fn put_status_line(out: &mut BytesMut, version: Version, status: u16, reason: &[u8]) {
    out.put_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    let mut code = itoa::Buffer::new();
    out.put_slice(code.format(status).as_bytes());
    out.put_u8(b' ');
    out.put_slice(reason);
    out.put_slice(b"\r\n");
}

fn put_fields(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// Writes a request head (always HTTP/1.1) into `out`.
pub fn write_request(out: &mut BytesMut, head: &RequestHeader) {
    out.put_slice(head.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(head.raw_path());
    out.put_slice(b" HTTP/1.1\r\n");
    put_fields(out, &head.headers);
    out.put_slice(b"\r\n");
}

/// Writes a response head into `out` with the given version.
pub fn write_response(out: &mut BytesMut, head: &ResponseHeader, version: Version) {
    out.put_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    let mut code = itoa::Buffer::new();
    out.put_slice(code.format(head.status.as_u16()).as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        head.status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
    put_fields(out, &head.headers);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
