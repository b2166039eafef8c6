//! STS's answer → a consistent [`CallerIdentity`], or a classified refusal. Sans-IO: status,
//! content type and body bytes in, result out.
//!
//! Nothing lenient: the Vault bypass (CVE-2020-16250) was a decoder that found an identity inside
//! another API's echoed body. The XML must be exactly one `GetCallerIdentityResponse` in STS's
//! namespace holding exactly one result with exactly one `Arn`, `UserId` and `Account`; no
//! DOCTYPE, entity declarations, comments, CDATA, processing instructions (but the XML
//! declaration) or trailing content; at most 16 levels deep and 64 KiB.

use quick_xml::events::Event;
use serde::Deserialize;

use crate::core::arn::{AccountId, Arn, Principal};
use crate::core::error::{Error, ErrorKind, StsErrorInfo};
use crate::core::identity::CallerIdentity;

/// The largest STS response body read. A real GetCallerIdentity answer is under 1 KiB; error
/// bodies are smaller still.
pub const MAX_STS_RESPONSE_BYTES: usize = 64 * 1024;
/// The deepest XML nesting accepted. A real answer is 3 levels deep.
pub const MAX_XML_DEPTH: usize = 16;
/// The longest `UserId` accepted (`AROA...:session-name` is at most about 150 characters).
pub const MAX_USER_ID_LEN: usize = 512;
/// STS's XML namespace.
pub const STS_NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

impl CallerIdentity {
    /// Builds an identity from its parts with the checks applied to STS answers.
    pub fn new(account: &str, arn: &str, user_id: &str) -> Result<Self, Error> {
        let invalid = |d: String| Error::new(ErrorKind::StsResponseInvalid, d);
        let account = AccountId::parse(account).ok_or_else(|| invalid("Account is not 12 digits".to_owned()))?;
        let arn = Arn::parse(arn).map_err(|e| invalid(format!("Arn is not a principal ARN: {e}")))?;
        if arn.account() != &account {
            return Err(invalid(format!("Arn is in account {} but Account is {account}", arn.account())));
        }
        if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN || !user_id.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(invalid("UserId is empty, too long or not printable ASCII".to_owned()));
        }
        if let Some(want) = user_id_mismatch(&arn, user_id) {
            return Err(invalid(format!(
                "UserId {} does not have the shape STS gives {want}",
                crate::core::text::quoted_shown(user_id)
            )));
        }
        Ok(Self::from_checked_parts(account, arn, user_id.to_owned()))
    }
}

/// The prefixes AWS gives unique ids by entity type ("IAM identifiers", unique identifiers).
const UNIQUE_ID_PREFIXES: [&str; 12] =
    ["ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "AKIA", "ANPA", "ANVA", "APKA", "AROA", "ASCA", "ASIA"];

/// An IAM unique id as the IAM API documents `UserId` and `RoleId`: 16 to 128 word characters.
fn is_unique_id(id: &str) -> bool {
    // No short circuit, so the loop vectorizes: ids are short and almost always valid.
    (16..=128).contains(&id.len()) && id.bytes().fold(true, |ok, b| ok & (b.is_ascii_alphanumeric() | (b == b'_')))
}

/// A unique id of the entity type that `prefix` marks: AWS's own ids start with it. An id that
/// starts with another type's prefix (a role's `AROA`, an access key's `AKIA`) is refused; an id
/// with no such prefix is accepted, as emulators issue them (moto: 20 lower-case characters).
fn is_unique_id_of(id: &str, prefix: &str) -> bool {
    is_unique_id(id) && UNIQUE_ID_PREFIXES.iter().all(|p| *p == prefix || !id.starts_with(p))
}

/// The shape STS documents for `UserId` per principal type (GetCallerIdentity, "UserId"): the
/// user's unique id (`AIDA…`) for IAM users, `AROA…:SESSION` for assumed roles, the account id
/// for the root user, and `ACCOUNT:NAME` for federated users. STS never reports a role ARN (it
/// reports the assumed role). Returns what was expected when `user_id` does not fit.
fn user_id_mismatch(arn: &Arn, user_id: &str) -> Option<&'static str> {
    let fits = match arn.principal() {
        Principal::User { .. } => is_unique_id_of(user_id, "AIDA"),
        Principal::AssumedRole { session_name, .. } => {
            // `AROA…:SESSION`: split where the session must start, without searching.
            let at = user_id.len().wrapping_sub(session_name.len() + 1);
            user_id.get(at..).is_some_and(|tail| tail.as_bytes().first() == Some(&b':') && &tail[1..] == session_name)
                && user_id.get(..at).is_some_and(|id| id.starts_with("AROA") && is_unique_id(id))
        }
        Principal::Root => user_id == arn.account().as_str(),
        Principal::FederatedUser { name } => {
            user_id.split_once(':').is_some_and(|(a, n)| a == arn.account().as_str() && n == name)
        }
        Principal::Role { .. } => return Some("no role ARN: a role is reported as assumed-role"),
    };
    (!fits).then(|| match arn.principal() {
        Principal::User { .. } => "an IAM user (a unique id of 16 to 128 letters and digits, AIDA... from AWS)",
        Principal::AssumedRole { .. } => "an assumed role (the role's AROA... id, a colon, and the ARN's session name)",
        Principal::Root => "the root user (the account id)",
        _ => "a federated user (the account id, a colon, and the ARN's user name)",
    })
}

/// The raw answer to a signed AWS call (STS or Organizations): what a transport returns and
/// the parsers read. The body holds at most the call's `max_body` + 1 bytes when the crate's
/// transport read it: reading stops there, so an oversized answer is seen as such without being
/// read whole. A transport of your own should stop reading there too; a longer body is refused
/// all the same.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, capped.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// An answer: its status, `Content-Type` (if any) and body (as read, capped).
    pub fn new(status: u16, content_type: Option<&str>, body: Vec<u8>) -> Self {
        Self { status, content_type: content_type.map(str::to_owned), body }
    }
}

#[cfg(feature = "http")]
impl From<http::Response<Vec<u8>>> for HttpAnswer {
    /// The answer from an `http` response: status, `Content-Type` (when it is text) and body.
    fn from(r: http::Response<Vec<u8>>) -> Self {
        let content_type = r.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self { status: r.status().as_u16(), content_type, body: r.into_body() }
    }
}

/// A successful answer: the identity and STS's request id, when given.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StsAnswer {
    /// The verified identity.
    pub identity: CallerIdentity,
    /// `ResponseMetadata/RequestId`, for correlating with AWS's logs.
    pub request_id: Option<String>,
}

enum Format {
    Xml,
    Json,
    Other,
}

fn format_of(content_type: Option<&str>) -> Format {
    let media = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "text/xml" | "application/xml" => Format::Xml,
        "application/json" | "application/x-amz-json-1.1" | "application/x-amz-json-1.0" => Format::Json,
        _ => Format::Other,
    }
}

fn invalid(detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::StsResponseInvalid, detail)
}

/// Parses STS's answer to a forwarded `GetCallerIdentity`.
///
/// - 200 with a valid, consistent identity: `Ok`. Any other 200: `sts_response_invalid`.
/// - 4xx: `signature_rejected` (STS refused the credentials or the signature), except throttling,
///   which is `sts_unavailable`. 5xx: `sts_unavailable`. Anything else: `sts_unavailable`, not
///   retryable (a redirect is never followed).
///
/// STS's error code, message and request id are kept in [`Error::sts_error`] for the server's
/// log; the message is not part of the error's `Display`.
///
/// ```
/// let body = br#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
///   <GetCallerIdentityResult>
///     <Arn>arn:aws:iam::123456789012:user/alice</Arn>
///     <UserId>AIDAEXAMPLEUSERID</UserId>
///     <Account>123456789012</Account>
///   </GetCallerIdentityResult>
///   <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
/// </GetCallerIdentityResponse>"#;
/// let answer = iam_join::parse_sts_response(200, Some("text/xml"), body).unwrap();
/// assert_eq!(answer.identity.arn().as_str(), "arn:aws:iam::123456789012:user/alice");
/// ```
pub fn parse_sts_response(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<StsAnswer, Error> {
    if body.len() > MAX_STS_RESPONSE_BYTES {
        return Err(if status == 200 {
            invalid(format!("STS answer is larger than {MAX_STS_RESPONSE_BYTES} bytes"))
        } else {
            refusal(status, None)
        });
    }
    let format = format_of(content_type);
    if status != 200 {
        let info = match format {
            Format::Xml => {
                std::str::from_utf8(body).ok().and_then(|t| parse_xml(t, true).ok()).and_then(|n| xml_error(&n))
            }
            Format::Json => json_error(body),
            Format::Other => None,
        };
        return Err(refusal(status, info));
    }
    match format {
        Format::Xml => {
            let text = std::str::from_utf8(body).map_err(|_| invalid("STS answer is not UTF-8"))?;
            xml_identity(text)
        }
        Format::Json => json_identity(body),
        Format::Other => Err(invalid(format!(
            "STS answered with content type {:?}, neither XML nor JSON",
            content_type.unwrap_or("").chars().take(64).collect::<String>()
        ))),
    }
}

/// Whether an STS answer says that STS is throttling the caller: HTTP 429, or a 4xx whose error
/// code is `Throttling`, `ThrottlingException`, `RequestLimitExceeded` or
/// `TooManyRequestsException`. Unlike a 5xx (STS failing), this is a reason to send less.
#[cfg(feature = "io")]
pub(crate) fn is_throttling_answer(answer: &HttpAnswer) -> bool {
    if answer.status == 429 {
        return true;
    }
    if !(400..=499).contains(&answer.status) {
        return false;
    }
    parse_sts_response(answer.status, answer.content_type.as_deref(), &answer.body).err().is_some_and(|e| {
        e.sts_error().is_some_and(|i| {
            matches!(
                i.code.as_str(),
                "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException"
            )
        })
    })
}

/// Codes STS uses when it is overloaded rather than refusing the caller.
fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "ServiceUnavailable"
            | "InternalFailure"
    )
}

fn refusal(status: u16, info: Option<StsErrorInfo>) -> Error {
    let code = info.as_ref().map(|i| i.code.as_str()).unwrap_or("");
    let shown = if code.is_empty() { "no error code".to_owned() } else { code.chars().take(64).collect() };
    let (kind, retryable, what) = match status {
        400..=499 if is_throttling(code) || status == 429 => (ErrorKind::StsUnavailable, true, "STS is throttling"),
        400..=499 => (ErrorKind::SignatureRejected, false, "STS refused the credentials or signature"),
        500..=599 => (ErrorKind::StsUnavailable, true, "STS failed"),
        300..=399 => (ErrorKind::StsUnavailable, false, "STS answered a redirect, which is never followed"),
        _ => (ErrorKind::StsUnavailable, false, "STS answered an unexpected status"),
    };
    let info = info.unwrap_or(StsErrorInfo { status, code: String::new(), message: String::new(), request_id: None });
    Error::new(kind, format!("{what}: {shown} (HTTP {status})"))
        .with_retryable(retryable)
        .with_sts(StsErrorInfo { status, ..info })
}

// ---- XML ----------------------------------------------------------------------------------------

/// A bounded, strict element tree.
#[derive(Debug, Default)]
struct Node {
    name: String,
    xmlns: Option<String>,
    text: String,
    children: Vec<Node>,
}

/// `lenient` (for error bodies, which only feed the log) also accepts comments and CDATA.
/// The text was read as UTF-8; a declaration naming anything else means the bytes are not what
/// the answer says they are.
fn check_declaration(d: &quick_xml::events::BytesDecl<'_>) -> Result<(), Error> {
    if let Some(enc) = d.encoding() {
        let enc = enc.map_err(|e| invalid(format!("bad XML declaration: {e}")))?;
        if !enc.eq_ignore_ascii_case("utf-8") {
            return Err(invalid(format!(
                "STS answer declares encoding {}, not UTF-8",
                crate::core::text::quoted_shown(&enc)
            )));
        }
    }
    Ok(())
}

fn parse_xml(text: &str, lenient: bool) -> Result<Node, Error> {
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut first = true;
    loop {
        let event = reader.read_event().map_err(|e| invalid(format!("STS answer is not well-formed XML: {e}")))?;
        let was_first = std::mem::replace(&mut first, false);
        match event {
            Event::Decl(d) if was_first => check_declaration(&d)?,
            Event::Decl(_) => return Err(invalid("XML declaration not at the start")),
            Event::DocType(_) => return Err(invalid("STS answer has a DOCTYPE")),
            Event::PI(_) => return Err(invalid("STS answer has a processing instruction")),
            Event::Comment(_) if lenient => {}
            Event::Comment(_) => return Err(invalid("STS answer has a comment")),
            Event::CData(c) if lenient => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&c.into_inner());
                }
            }
            Event::CData(_) => return Err(invalid("STS answer has a CDATA section")),
            Event::Start(e) => {
                if root.is_some() {
                    return Err(invalid("STS answer has content after its root element"));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(invalid(format!("STS answer nests deeper than {MAX_XML_DEPTH}")));
                }
                let name = e.name().as_ref().to_owned();
                let mut node = Node { name, ..Node::default() };
                for attr in e.attributes() {
                    let attr = attr.map_err(|e| invalid(format!("bad attribute: {e}")))?;
                    if attr.key.as_ref() != "xmlns" || node.xmlns.is_some() {
                        return Err(invalid(format!(
                            "element {} has an unexpected attribute",
                            crate::core::text::quoted_shown(&node.name)
                        )));
                    }
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| invalid(format!("bad attribute: {e}")))?;
                    node.xmlns = Some(value.into_owned());
                }
                stack.push(node);
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| invalid("unbalanced end tag"))?;
                if !node.children.is_empty() && !node.text.trim().is_empty() {
                    return Err(invalid(format!(
                        "element {} mixes text and elements",
                        crate::core::text::quoted_shown(&node.name)
                    )));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(invalid("STS answer has text outside its root element")),
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => quick_xml::escape::resolve_predefined_entity(&r)
                        .ok_or_else(|| invalid("STS answer references an undeclared entity"))?
                        .to_owned(),
                };
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&resolved),
                    None => return Err(invalid("STS answer has text outside its root element")),
                }
            }
            Event::Eof => break,
            Event::Empty(_) => return Err(invalid("unexpected empty element")),
        }
    }
    if !stack.is_empty() {
        return Err(invalid("STS answer is truncated"));
    }
    root.ok_or_else(|| invalid("STS answer has no root element"))
}

/// Where a streaming parse of a success answer stands: the only shape accepted is
/// `GetCallerIdentityResponse > (GetCallerIdentityResult > (Arn, UserId, Account), ResponseMetadata > RequestId)`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Root,
    Result,
    Metadata,
    Arn,
    UserId,
    Account,
    RequestId,
}

/// Parses a success answer in one pass, without building a tree: every element must be the one
/// expected at its place, each at most once; text may appear only in leaves.
fn xml_identity(text: &str) -> Result<StsAnswer, Error> {
    use std::borrow::Cow;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().expand_empty_elements = true;
    let mut path: Vec<Slot> = Vec::with_capacity(4);
    let mut leaves: [Option<Cow<'_, str>>; 4] = [None, None, None, None]; // Arn, UserId, Account, RequestId
    let (mut seen_result, mut seen_metadata, mut done, mut first) = (false, false, false, true);
    let leaf_index = |s: Slot| match s {
        Slot::Arn => Some(0),
        Slot::UserId => Some(1),
        Slot::Account => Some(2),
        Slot::RequestId => Some(3),
        _ => None,
    };
    loop {
        let event = reader.read_event().map_err(|e| invalid(format!("STS answer is not well-formed XML: {e}")))?;
        let was_first = std::mem::replace(&mut first, false);
        match event {
            Event::Decl(d) if was_first => check_declaration(&d)?,
            Event::Start(e) => {
                if done {
                    return Err(invalid("STS answer has content after its root element"));
                }
                let name = e.name();
                let name = name.as_ref();
                let slot = match (path.last(), name) {
                    (None, "GetCallerIdentityResponse") => Slot::Root,
                    (None, other) => {
                        return Err(invalid(format!(
                            "STS answer is {}, not GetCallerIdentityResponse",
                            crate::core::text::quoted_shown(other)
                        )));
                    }
                    (Some(Slot::Root), "GetCallerIdentityResult") if !std::mem::replace(&mut seen_result, true) => {
                        Slot::Result
                    }
                    (Some(Slot::Root), "ResponseMetadata") if !std::mem::replace(&mut seen_metadata, true) => {
                        Slot::Metadata
                    }
                    (Some(Slot::Result), "Arn") => Slot::Arn,
                    (Some(Slot::Result), "UserId") => Slot::UserId,
                    (Some(Slot::Result), "Account") => Slot::Account,
                    (Some(Slot::Metadata), "RequestId") => Slot::RequestId,
                    (Some(_), other) => {
                        return Err(invalid(format!(
                            "unexpected or repeated element {}",
                            crate::core::text::quoted_shown(other)
                        )));
                    }
                };
                if let Some(i) = leaf_index(slot)
                    && leaves[i].is_some()
                {
                    return Err(invalid(format!("more than one {}", crate::core::text::quoted_shown(name))));
                }
                let mut xmlns = None;
                for attr in e.attributes() {
                    let attr = attr.map_err(|e| invalid(format!("bad attribute: {e}")))?;
                    if attr.key.as_ref() != "xmlns" || xmlns.is_some() {
                        return Err(invalid(format!(
                            "element {} has an unexpected attribute",
                            crate::core::text::quoted_shown(name)
                        )));
                    }
                    xmlns = Some(
                        attr.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| invalid(format!("bad attribute: {e}")))?,
                    );
                }
                // The root declares STS's namespace; descendants inherit it or restate it.
                match (slot, xmlns.as_deref()) {
                    (_, Some(STS_NAMESPACE)) => {}
                    (Slot::Root, _) => return Err(invalid("GetCallerIdentityResponse is not in STS's namespace")),
                    (_, None) => {}
                    (_, Some(_)) => return Err(invalid("an element of the answer is in another namespace")),
                }
                if let Some(i) = leaf_index(slot) {
                    leaves[i] = Some(Cow::Borrowed(""));
                }
                path.push(slot);
            }
            Event::End(_) => {
                let slot = path.pop().ok_or_else(|| invalid("unbalanced end tag"))?;
                if slot == Slot::Root {
                    done = true;
                }
            }
            Event::Text(t) => {
                // Raw text: EOL normalization cannot matter, since values with CR or LF are
                // refused by the ARN, account and user id checks.
                let content = t.into_inner();
                match path.last().copied().and_then(leaf_index) {
                    Some(i) => append(&mut leaves[i], content),
                    None if content.trim().is_empty() => {}
                    None => return Err(invalid("STS answer has text outside a value element")),
                }
            }
            Event::GeneralRef(r) => {
                let resolved: Cow<'_, str> = match r.resolve_char_ref() {
                    Ok(Some(c)) => Cow::Owned(c.to_string()),
                    _ => Cow::Borrowed(
                        quick_xml::escape::resolve_predefined_entity(&r)
                            .ok_or_else(|| invalid("STS answer references an undeclared entity"))?,
                    ),
                };
                match path.last().copied().and_then(leaf_index) {
                    Some(i) => append(&mut leaves[i], resolved),
                    None => return Err(invalid("STS answer has text outside a value element")),
                }
            }
            Event::Eof => break,
            Event::Decl(_) => return Err(invalid("XML declaration not at the start")),
            Event::DocType(_) => return Err(invalid("STS answer has a DOCTYPE")),
            Event::PI(_) => return Err(invalid("STS answer has a processing instruction")),
            Event::Comment(_) => return Err(invalid("STS answer has a comment")),
            Event::CData(_) => return Err(invalid("STS answer has a CDATA section")),
            Event::Empty(_) => return Err(invalid("unexpected empty element")),
        }
    }
    if !done || !path.is_empty() {
        return Err(invalid("STS answer is truncated or has no GetCallerIdentityResponse"));
    }
    if !seen_result {
        return Err(invalid("GetCallerIdentityResponse has no GetCallerIdentityResult"));
    }
    let [arn, user_id, account, request_id] = leaves;
    let (arn, user_id, account) = (need(arn, "Arn")?, need(user_id, "UserId")?, need(account, "Account")?);
    let request_id = match request_id {
        Some(r) if r.is_empty() => return Err(invalid("RequestId is empty")),
        other => other.map(Cow::into_owned),
    };
    if seen_metadata && request_id.is_none() {
        return Err(invalid("ResponseMetadata has no RequestId"));
    }
    Ok(StsAnswer { identity: CallerIdentity::new(&account, &arn, &user_id)?, request_id })
}

fn need<'a>(v: Option<std::borrow::Cow<'a, str>>, what: &str) -> Result<std::borrow::Cow<'a, str>, Error> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid(format!("{what} is missing or empty"))),
    }
}

/// Appends text to a leaf, borrowing when it is the only piece.
fn append<'a>(leaf: &mut Option<std::borrow::Cow<'a, str>>, piece: std::borrow::Cow<'a, str>) {
    match leaf {
        Some(s) if s.is_empty() => *s = piece,
        Some(s) => s.to_mut().push_str(&piece),
        None => *leaf = Some(piece),
    }
}

/// `<ErrorResponse><Error>..</Error><RequestId>..</RequestId></ErrorResponse>`, or with the
/// `<Errors>` wrapper some emulators use.
fn xml_error(root: &Node) -> Option<StsErrorInfo> {
    if root.name != "ErrorResponse" {
        return None;
    }
    let error = root.children.iter().find(|c| c.name == "Error").or_else(|| {
        root.children.iter().find(|c| c.name == "Errors").and_then(|e| e.children.iter().find(|c| c.name == "Error"))
    })?;
    let text = |n: &Node, name: &str| n.children.iter().find(|c| c.name == name).map(|c| c.text.trim().to_owned());
    Some(StsErrorInfo {
        status: 0,
        code: text(error, "Code").unwrap_or_default(),
        message: text(error, "Message").unwrap_or_default(),
        request_id: text(root, "RequestId").or_else(|| text(error, "RequestId")),
    })
}

// ---- JSON ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEnvelope {
    #[serde(rename = "GetCallerIdentityResponse")]
    response: JsonResponse,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonResponse {
    #[serde(rename = "GetCallerIdentityResult")]
    result: JsonResult,
    #[serde(rename = "ResponseMetadata", default)]
    metadata: Option<JsonMetadata>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonResult {
    #[serde(rename = "Account")]
    account: String,
    #[serde(rename = "Arn")]
    arn: String,
    #[serde(rename = "UserId")]
    user_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMetadata {
    #[serde(rename = "RequestId")]
    request_id: String,
}

fn json_identity(body: &[u8]) -> Result<StsAnswer, Error> {
    let env: JsonEnvelope = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("STS JSON answer is not one GetCallerIdentityResponse: {e}")))?;
    let r = env.response.result;
    let identity = CallerIdentity::new(&r.account, &r.arn, &r.user_id)?;
    Ok(StsAnswer { identity, request_id: env.response.metadata.map(|m| m.request_id) })
}

#[derive(Deserialize)]
struct JsonErrorEnvelope {
    #[serde(rename = "Error")]
    error: JsonErrorBody,
    #[serde(rename = "RequestId", default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct JsonErrorBody {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

fn json_error(body: &[u8]) -> Option<StsErrorInfo> {
    let env: JsonErrorEnvelope = serde_json::from_slice(body).ok()?;
    Some(StsErrorInfo { status: 0, code: env.error.code, message: env.error.message, request_id: env.request_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(arn: &str, user_id: &str) -> Option<&'static str> {
        user_id_mismatch(&Arn::parse(arn).unwrap(), user_id)
    }

    #[test]
    fn user_id_shapes_per_principal_type() {
        let user = "arn:aws:iam::111111111111:user/ci";
        let role = "arn:aws:sts::111111111111:assumed-role/r/s";
        // Positive controls: AWS's own ids, and moto's lower-case user ids.
        assert_eq!(shape(user, "AIDAEXAMPLEUSERID0001"), None);
        assert_eq!(shape(user, "ihy4yye316c631k3edvm"), None);
        assert_eq!(shape(role, "AROAEXAMPLEROLEID0001:s"), None);
        assert_eq!(shape("arn:aws:iam::111111111111:root", "111111111111"), None);
        assert_eq!(shape("arn:aws:sts::111111111111:federated-user/bob", "111111111111:bob"), None);
        // Another type's prefix, too short, a session that differs, the wrong account.
        assert!(shape(user, "AROAEXAMPLEROLEID0001").is_some());
        assert!(shape(user, "AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(shape(user, "AIDASHORT").is_some());
        assert!(shape(role, "AROAEXAMPLEROLEID0001:t").is_some());
        assert!(shape(role, "AIDAEXAMPLEUSERID0001:s").is_some());
        assert!(shape("arn:aws:iam::111111111111:root", "222222222222").is_some());
        assert!(shape("arn:aws:sts::111111111111:federated-user/bob", "222222222222:bob").is_some());
        assert!(shape("arn:aws:iam::111111111111:role/r", "AROAEXAMPLEROLEID0001").is_some());
    }

    #[test]
    fn xml_declarations_must_say_utf8() {
        let ok = "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:iam::111111111111:user/ci</Arn><UserId>AIDAEXAMPLEUSERID0001</UserId><Account>111111111111</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";
        for (decl, accepted) in [
            ("", true),
            ("<?xml version=\"1.0\"?>", true),
            ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>", true),
            ("<?xml version=\"1.0\" encoding=\"utf-8\"?>", true),
            ("<?xml version=\"1.0\" encoding=\"UTF-16\"?>", false),
            ("<?xml version=\"1.0\" encoding=\"windows-1252\"?>", false),
        ] {
            let got = parse_sts_response(200, Some("text/xml"), format!("{decl}{ok}").as_bytes());
            assert_eq!(got.is_ok(), accepted, "{decl}: {got:?}");
        }
    }
}
