//! What `weftd doctor` found: one line per check, ✓ / ✗ / –, with the cause
//! and the fix, as text for people and JSON for machines. No I/O.

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Wrong: the node does not work, or will not, until it is fixed.
    Fail,
    /// Not checked, or worth knowing but not wrong.
    Note,
}

impl Status {
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Note => "–",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `interface`, `store`, `peer 10.244.2.0/24`, …
    pub what: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (failures and notes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            what: what.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()).filter(|f: &String| !f.is_empty()),
        }
    }

    pub fn note(what: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            status: Status::Note,
            detail: detail.into(),
            fix: None,
        }
    }
}

/// etcd at revision `now`, against `seen`, the highest the running weftd's
/// watch has seen (None: no running weftd to ask). A revision that went
/// back means etcd was restored from an older backup, or replaced: what was
/// written since (leases, renewals) is gone from it.
pub fn revision_check(
    now: i64,
    seen: Option<i64>,
    rewound: Option<crate::store::Rewind>,
    ago: impl Fn(u64) -> String,
) -> Check {
    const WHAT: &str = "etcd revision";
    if let (Some(r), Some(seen)) = (rewound, seen) {
        if now >= seen {
            return Check::note(
                WHAT,
                format!(
                    "{now}; it went back from {} to {} {} (etcd restored from an older backup, or replaced): weftd replaced its table with what etcd held then, and what was written after the backup, leases and renewals, was lost; check that every node's lease is back (etcdctl get --prefix <etcd-prefix>/subnets)",
                    r.from,
                    r.to,
                    ago(r.at_ms)
                ),
            );
        }
    }
    match seen {
        None => Check::note(
            WHAT,
            format!("{now}; no running weftd here to compare with what it last saw"),
        ),
        Some(seen) if now < seen => Check::fail(
            WHAT,
            format!(
                "etcd is at revision {now}, below the {seen} this node's weftd has seen: etcd was restored from an older backup (or replaced), and what was written since, leases and renewals, is gone from it"
            ),
            "weftd re-lists within 30 s and acquires its lease again; restart weftd on every node to do it at once, then check that every node's lease is back (etcdctl get --prefix <etcd-prefix>/subnets)",
        ),
        Some(seen) => Check::pass(WHAT, format!("{now}; this node's weftd has seen {seen}")),
    }
}

/// Every check, in the order they ran.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    /// Whether every check passed or is only a note: `weftd doctor`'s exit 0.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// One line per check (`✓ interface: eth0 …`), the fix indented under it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{} {}: {}\n", c.status.mark(), c.what, c.detail));
            if let Some(f) = &c.fix {
                out.push_str(&format!("    fix: {f}\n"));
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        out.push_str(&if failed == 0 {
            "all checks passed\n".to_string()
        } else {
            format!("{failed} check(s) failed\n")
        });
        out
    }

    /// `{"healthy": …, "checks": [{"what", "status", "detail", "fix"}]}`.
    pub fn json(&self) -> String {
        serde_json::json!({ "healthy": self.healthy(), "checks": self.checks }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_say_the_same() {
        let mut r = Report::default();
        r.push(Check::pass("interface", "eth0 192.0.2.1"));
        r.push(Check::note("forwarding", "off; weftd turns it on"));
        assert!(r.healthy());
        r.push(Check::fail(
            "peer 10.244.2.0/24",
            "VXLAN to 192.0.2.2:8472 is dropped",
            "allow UDP 8472 between the nodes",
        ));
        assert!(!r.healthy());
        let t = r.text();
        assert!(t.contains("✓ interface: eth0 192.0.2.1\n"), "{t}");
        assert!(
            t.contains(
                "✗ peer 10.244.2.0/24: VXLAN to 192.0.2.2:8472 is dropped\n    fix: allow UDP 8472"
            ),
            "{t}"
        );
        assert!(t.ends_with("1 check(s) failed\n"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(j["healthy"], false);
        assert_eq!(j["checks"][2]["status"], "fail");
        assert!(j["checks"][0].get("fix").is_none());
    }

    #[test]
    fn a_revision_below_what_weftd_saw_is_a_restore() {
        let ago = |_| "3m ago".to_string();
        let c = revision_check(90, Some(120), None, ago);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("revision 90, below the 120") && c.detail.contains("older backup")
        );
        assert!(c.fix.unwrap().contains("restart weftd on every node"));
        assert_eq!(
            revision_check(120, Some(120), None, ago).status,
            Status::Pass
        );
        assert_eq!(revision_check(5, None, None, ago).status, Status::Note);
        // Found and handled by weftd: worth knowing, not wrong now.
        let r = crate::store::Rewind {
            from: 150,
            to: 90,
            at_ms: 0,
        };
        let c = revision_check(95, Some(95), Some(r), ago);
        assert_eq!(c.status, Status::Note);
        assert!(
            c.detail.contains("went back from 150 to 90 3m ago"),
            "{}",
            c.detail
        );
    }
}
