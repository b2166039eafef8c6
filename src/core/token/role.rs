//! [`Role`]: the system roles a provision token may grant, as Teleport names them.

use std::fmt;

/// A system role a provision token may grant.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `Auth`
    Auth,
    /// `Node`
    Node,
    /// `Proxy`
    Proxy,
    /// `Kube`
    Kube,
    /// `App`
    App,
    /// `Db`
    Db,
    /// `WindowsDesktop`
    WindowsDesktop,
    /// `Discovery`
    Discovery,
    /// `Bot` (requires `spec.bot_name`)
    Bot,
    /// `Instance`
    Instance,
    /// `Okta`
    Okta,
    /// `MDM`
    Mdm,
    /// `Trusted_cluster`
    TrustedCluster,
}

impl Role {
    pub(crate) const ALL: [Role; 13] = [
        Self::Auth,
        Self::Node,
        Self::Proxy,
        Self::Kube,
        Self::App,
        Self::Db,
        Self::WindowsDesktop,
        Self::Discovery,
        Self::Bot,
        Self::Instance,
        Self::Okta,
        Self::Mdm,
        Self::TrustedCluster,
    ];

    /// The canonical name Teleport uses, e.g. `WindowsDesktop`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "Auth",
            Self::Node => "Node",
            Self::Proxy => "Proxy",
            Self::Kube => "Kube",
            Self::App => "App",
            Self::Db => "Db",
            Self::WindowsDesktop => "WindowsDesktop",
            Self::Discovery => "Discovery",
            Self::Bot => "Bot",
            Self::Instance => "Instance",
            Self::Okta => "Okta",
            Self::Mdm => "MDM",
            Self::TrustedCluster => "Trusted_cluster",
        }
    }

    /// Teleport normalizes role names case-insensitively and accepts a few aliases.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "windows_desktop" => return Some(Self::WindowsDesktop),
            "trustedcluster" => return Some(Self::TrustedCluster),
            _ => {}
        }
        Self::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(&lower))
    }
}

/// The canonical name, e.g. `"Kube"`.
#[cfg(feature = "serialize")]
impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
