//! What the classifier knows of functions: which ones may write.

use std::collections::HashSet;

/// Built-in functions that write or take locks: a SELECT calling one must run on the primary.
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "set_config",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "pg_switch_wal",
    "pg_create_restore_point",
    "dblink_exec",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
];

fn is_builtin_write_function(name: &[u8]) -> bool {
    let lower = |p: &str| {
        name.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
    };
    lower("pg_advisory")
        || lower("pg_try_advisory")
        || WRITE_FUNCTIONS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// Which functions may write: the built-in list, plus names configured (or read from the
/// catalog) as writing, minus names configured as read-only. Names are unqualified and
/// case-folded; any overload that may write makes the name a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Functions {
    write: HashSet<Box<[u8]>>,
    read_only: HashSet<Box<[u8]>>,
}

impl Functions {
    /// Built-in knowledge plus these overrides.
    pub fn new<'a>(
        write: impl IntoIterator<Item = &'a str>,
        read_only: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let fold = |n: &str| n.to_ascii_lowercase().into_bytes().into_boxed_slice();
        Functions {
            write: write.into_iter().map(fold).collect(),
            read_only: read_only.into_iter().map(fold).collect(),
        }
    }

    /// These functions with more names that may write (from the catalog); configured
    /// read-only names still win.
    pub fn with_writes<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut f = self.clone();
        f.write.extend(
            names
                .into_iter()
                .map(|n| n.to_ascii_lowercase().into_bytes().into_boxed_slice()),
        );
        f
    }

    /// Whether a call to `name` may write.
    pub fn is_write(&self, name: &[u8]) -> bool {
        if self.write.is_empty() && self.read_only.is_empty() {
            return is_builtin_write_function(name);
        }
        let folded = name.to_ascii_lowercase();
        if self.read_only.contains(folded.as_slice()) {
            return false;
        }
        self.write.contains(folded.as_slice()) || is_builtin_write_function(name)
    }
}
