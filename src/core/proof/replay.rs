//! What a checked proof makes STS answer: a [`Replay`], sent as is.

use std::borrow::Cow;
use std::fmt;

use crate::core::endpoint::Endpoint;

/// An HTTP method a [`Replay`] uses.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
}

impl Method {
    /// `GET` or `POST`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// The request a checked proof makes STS answer: built from validated parts only, and sent as is
/// (`Host` included) to [`Replay::endpoint`], or to an operator's equivalent address that keeps
/// the signed host.
#[derive(Clone, PartialEq, Eq)]
pub struct Replay {
    method: Method,
    endpoint: &'static Endpoint,
    /// The path and query, e.g. `/`.
    target: Cow<'static, str>,
    /// The header block, `name: value\r\n` per header, names lowercase.
    head: String,
    /// Per header: (name start, name end, value start, value end) in `head`.
    spans: Vec<(u16, u16, u16, u16)>,
    body: &'static [u8],
}

impl Replay {
    pub(crate) fn new(
        method: Method,
        endpoint: &'static Endpoint,
        target: impl Into<Cow<'static, str>>,
        body: &'static [u8],
    ) -> Self {
        let target = target.into();
        Self { method, endpoint, target, head: String::new(), spans: Vec::new(), body }
    }

    pub(crate) fn with_capacity(mut self, bytes: usize, headers: usize) -> Self {
        self.head.reserve(bytes);
        self.spans.reserve(headers);
        self
    }

    /// Appends `name: value` (a lowercase name). Offsets fit in u16: heads are bounded far below.
    pub(crate) fn push_header(&mut self, name: &str, value: &str) {
        let at = |len: usize| u16::try_from(len).unwrap_or(u16::MAX);
        let a = at(self.head.len());
        self.head.push_str(name);
        let b = at(self.head.len());
        self.head.push_str(": ");
        let c = at(self.head.len());
        self.head.push_str(value);
        let d = at(self.head.len());
        self.head.push_str("\r\n");
        self.spans.push((a, b, c, d));
    }

    /// The value of header number `i` (in [`Replay::headers`] order).
    pub(crate) fn header_value(&self, i: usize) -> &str {
        let (_, _, start, end) = self.spans[i];
        &self.head[usize::from(start)..usize::from(end)]
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The validated STS endpoint the proof is signed for.
    pub fn endpoint(&self) -> &'static Endpoint {
        self.endpoint
    }

    /// The path and query, e.g. `/`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// `https://<host><target>`.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.endpoint.host(), self.target)
    }

    /// The headers to send, lowercase names, `host` among them, in order.
    pub fn headers(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> + ExactSizeIterator {
        self.spans.iter().map(|&(a, b, c, d)| (&self.head[a.into()..b.into()], &self.head[c.into()..d.into()]))
    }

    /// The body to send.
    pub fn body(&self) -> &'static [u8] {
        self.body
    }

    /// The replay as HTTP/1.1 bytes (what goes on the wire), for logs of sizes, tests and tools.
    /// Adds `content-length` when there is a body and no header gives its length.
    pub fn to_http1(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.target.len() + 96);
        out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", self.method.as_str(), self.target).as_bytes());
        out.extend_from_slice(self.head.as_bytes());
        if !self.body.is_empty() && !self.headers().any(|(n, _)| n == "content-length") {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
        out
    }

    /// The replay as an `http::Request`, for an HTTP stack built on the `http` crate.
    #[cfg(feature = "http")]
    pub fn to_http(&self) -> Result<http::Request<Vec<u8>>, crate::core::error::Error> {
        let method = match self.method {
            Method::Get => http::Method::GET,
            Method::Post => http::Method::POST,
        };
        let mut b = http::Request::builder().method(method).uri(self.url());
        for (name, value) in self.headers() {
            b = b.header(name, value);
        }
        // Every name and value passed validation, so this cannot fail; map it all the same.
        b.body(self.body.to_vec())
            .map_err(|e| crate::core::error::Error::config_invalid(format!("the replay cannot be built: {e}")))
    }
}

/// Redacted: the endpoint, and header names with value lengths, never values.
impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Lens<'a>(&'a Replay);
        impl fmt::Debug for Lens<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.headers().map(|(n, v)| (n, format!("<{} bytes>", v.len())))).finish()
            }
        }
        f.debug_struct("Replay")
            .field("method", &self.method)
            .field("endpoint", &self.endpoint.host())
            // The query can hold a signature or a session token: its length only.
            .field("path", &self.target.split('?').next().unwrap_or(""))
            .field("query", &format_args!("<{} bytes>", self.target.split_once('?').map_or(0, |(_, q)| q.len())))
            .field("headers", &Lens(self))
            .finish_non_exhaustive()
    }
}
