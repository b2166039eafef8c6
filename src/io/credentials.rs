//! AWS credentials and SigV4 signing with `aws-sigv4`, shared by the agent side and the
//! Organizations lookups (which use the auth server's own credentials).

use std::fmt;

use zeroize::Zeroizing;

use crate::core::error::Error;

/// AWS credentials. The secret key and session token are zeroized on drop and never printed:
/// `Debug` shows the access key id and lengths only.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }

    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optional `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Result<Self, Error> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let missing = |k: &str| Error::config_invalid(format!("{k} is not set"));
        Ok(Self::new(
            get("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?,
            get("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?,
            get("AWS_SESSION_TOKEN"),
        ))
    }

    /// The access key id (not secret).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The same credentials as the AWS SDK's type.
    #[cfg(feature = "sign")]
    pub(crate) fn to_sdk(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.as_str().to_owned(),
            self.session_token.as_ref().map(|t| t.as_str().to_owned()),
            None,
            "iam-join",
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &format_args!("<redacted {} bytes>", self.secret_access_key.len()))
            .field("session_token", &self.session_token.as_ref().map(|t| format!("<redacted {} bytes>", t.len())))
            .finish()
    }
}

/// Signs a `POST https://{host}/` request with these headers (lowercase names, `host` among them)
/// and body, and returns the headers SigV4 adds (`x-amz-date`, `x-amz-security-token` when there
/// is a session token, `authorization`).
#[cfg(feature = "sign")]
pub(crate) fn sign_headers(
    creds: &Credentials,
    service: &str,
    region: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: std::time::SystemTime,
) -> Result<Vec<(String, String)>, Error> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let failed = |e: &dyn fmt::Display| Error::config_invalid(format!("could not sign the request: {e}"));
    let identity = creds.to_sdk().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let signable =
        SignableRequest::new("POST", format!("https://{host}/"), headers.iter().copied(), SignableBody::Bytes(body))
            .map_err(|e| failed(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| failed(&e))?.into_parts();
    Ok(instructions.headers().map(|(n, v)| (n.to_owned(), v.to_owned())).collect())
}

/// Presigns `GET https://{host}/?{query}` with these headers (lowercase names, `host` among them)
/// signed, valid for `expires`: returns the query parameters SigV4 adds (`X-Amz-Algorithm`,
/// `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`,
/// `X-Amz-Security-Token` with a session token, `X-Amz-Signature`), values not yet encoded.
#[cfg(feature = "agent")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn presign_query(
    creds: &Credentials,
    service: &str,
    region: &str,
    host: &str,
    query: &str,
    headers: &[(&str, &str)],
    expires: std::time::Duration,
    time: std::time::SystemTime,
) -> Result<Vec<(String, String)>, Error> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let failed = |e: &dyn fmt::Display| Error::config_invalid(format!("could not presign the request: {e}"));
    let identity = creds.to_sdk().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let signable = SignableRequest::new(
        "GET",
        format!("https://{host}/?{query}"),
        headers.iter().copied(),
        // The hash of the empty body, as STS computes it for a presigned GET (not UNSIGNED-PAYLOAD,
        // which is S3's).
        SignableBody::Bytes(b""),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| failed(&e))?.into_parts();
    Ok(instructions.params().iter().map(|(n, v)| ((*n).to_owned(), v.to_string())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let c = Credentials::new("AKIAIOSFODNN7EXAMPLE", "secret-key-123", Some("session-token".to_owned()));
        assert_eq!(
            format!("{c:?}"),
            "Credentials { access_key_id: \"AKIAIOSFODNN7EXAMPLE\", secret_access_key: <redacted 14 bytes>, session_token: Some(\"<redacted 13 bytes>\") }"
        );
    }
}
