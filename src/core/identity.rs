//! A verified AWS identity: the data type. Its checked constructor, [`CallerIdentity::new`],
//! lives with the answer parser that applies STS's rules (`response`).

use std::fmt;

use crate::core::arn::{AccountId, Arn};

/// A verified AWS identity, as STS returned it and consistent with itself.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CallerIdentity {
    account: AccountId,
    arn: Arn,
    user_id: String,
    /// A proof of an IAM role, not of one session (a web identity token): matched as every
    /// session of the role.
    every_session: bool,
}

impl CallerIdentity {
    /// The 12-digit account.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The principal's ARN, parsed.
    pub fn arn(&self) -> &Arn {
        &self.arn
    }

    /// The unique id (`AIDA...` for users, `AROA...:session` for assumed roles).
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// Whether the proof named an IAM role rather than one of its sessions (a web identity token
    /// for a role session names the role): rules then admit it only when they admit every
    /// session of the role ([`Subject::every_session_of`](crate::Subject::every_session_of)).
    pub fn is_every_session_of_role(&self) -> bool {
        self.every_session
    }

    /// An identity from parts the caller has already checked against STS's rules.
    pub(crate) fn from_checked_parts(account: AccountId, arn: Arn, user_id: String) -> Self {
        Self { account, arn, user_id, every_session: false }
    }

    /// Every session of the IAM role `arn` (checked by the caller to be a role of `account`).
    #[cfg(feature = "web-identity")]
    pub(crate) fn every_session_of_role(account: AccountId, arn: Arn, user_id: String) -> Self {
        Self { account, arn, user_id, every_session: true }
    }
}

impl fmt::Debug for CallerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerIdentity")
            .field("account", &self.account.as_str())
            .field("arn", &self.arn.as_str())
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// `{"account": "...", "arn": "...", "user_id": "..."}`.
#[cfg(feature = "serialize")]
impl serde::Serialize for CallerIdentity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("CallerIdentity", 3)?;
        st.serialize_field("account", self.account.as_str())?;
        st.serialize_field("arn", self.arn.as_str())?;
        st.serialize_field("user_id", &self.user_id)?;
        st.end()
    }
}
