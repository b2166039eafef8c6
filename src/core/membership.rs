//! AWS Organizations semantics: where an account sits, and whether an organization rule admits
//! it. Pure: the lookup that produces a [`Membership`] is the I/O edge's (`organizations`).

use crate::core::rule::{OrganizationalUnits, OuInclude, Rule};

/// Where an account sits in AWS Organizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// The account belongs to no organization the lookup can see.
    NotInOrganization,
    /// The account belongs to `organization_id`, under `ancestors` (parent first, root last).
    /// Made with [`Membership::member`].
    #[non_exhaustive]
    Member {
        /// `o-...`.
        organization_id: String,
        /// OU ids (`ou-...`) from the account's parent up, then the root id (`r-...`).
        ancestors: Vec<String>,
    },
}

impl Membership {
    /// A member of `organization_id`, under `ancestors` (parent first, root last).
    pub fn member(organization_id: impl Into<String>, ancestors: Vec<String>) -> Self {
        Membership::Member { organization_id: organization_id.into(), ancestors }
    }

    /// Whether an organization rule's organization fields admit this membership. The rule's other
    /// fields (account, ARN) are not considered here. A rule without `aws_organization_id`
    /// admits nothing here (it needs no lookup at all).
    pub fn admits(&self, rule: &Rule) -> bool {
        let Some(want) = rule.aws_organization_id() else { return false };
        let Membership::Member { organization_id, ancestors } = self else { return false };
        if organization_id != want {
            return false;
        }
        match rule.aws_organizational_units() {
            None => true,
            Some(OrganizationalUnits { include, exclude }) => {
                let included = match include {
                    OuInclude::All => true,
                    OuInclude::Any(ids) => ids.iter().any(|id| ancestors.contains(id)),
                };
                included && !exclude.iter().any(|id| ancestors.contains(id))
            }
        }
    }
}
