//! The statuses a build reports (an invocation's, a target's, a test's)
//! as types, and the one rule that says which are failures. Storage counts
//! failures with it, the lists filter with it and the pages colour with
//! it, so they cannot disagree. Stored and served as Bazel's names, as
//! before these were types.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a status reads to a person: what a page colours it, what a count
/// counts it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It worked.
    Passed,
    /// It failed: counted in failed counts and shown red.
    Failed,
    /// It failed and then passed.
    Flaky,
    /// Not decided yet.
    Running,
    /// Neither passed nor failed (did not run, was disconnected).
    Neutral,
}

/// Gives each variant its Bazel name and serde as that name; a name it
/// does not know reads as `$unknown`.
macro_rules! named {
    ($ty:ident, unknown: $unknown:ident, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, for tables built from the rule.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// Bazel's name, as stored and served.
            pub const fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            /// The variant a stored name names.
            pub fn from_name(name: &str) -> Self {
                match name { $($name => $ty::$variant,)+ _ => $ty::$unknown }
            }

            /// Whether it is a failure, by its [`Verdict`].
            pub fn is_failure(self) -> bool {
                self.verdict() == Verdict::Failed
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok($ty::from_name(&name))
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Where an invocation stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    /// Events are still arriving.
    #[default]
    InProgress,
    /// Bazel finished with exit code 0.
    Succeeded,
    /// Bazel finished with a non-zero exit code.
    Failed,
    /// The event stream ended without Bazel saying it was finished.
    Disconnected,
}

named!(Status, unknown: Disconnected, {
    InProgress => "IN_PROGRESS",
    Succeeded => "SUCCEEDED",
    Failed => "FAILED",
    Disconnected => "DISCONNECTED",
});

impl Status {
    /// How it reads.
    pub fn verdict(self) -> Verdict {
        match self {
            Status::InProgress => Verdict::Running,
            Status::Succeeded => Verdict::Passed,
            Status::Failed => Verdict::Failed,
            Status::Disconnected => Verdict::Neutral,
        }
    }
}

/// A target's outcome (Bazel's TargetComplete, or its Aborted event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Not completed yet (stored as the empty string).
    #[default]
    Pending,
    /// Built.
    Success,
    /// Failed to build.
    Failed,
    /// Not built: the build stopped first.
    Aborted,
}

named!(Outcome, unknown: Pending, {
    Pending => "",
    Success => "SUCCESS",
    Failed => "FAILED",
    Aborted => "ABORTED",
});

impl Outcome {
    /// How it reads.
    pub fn verdict(self) -> Verdict {
        match self {
            Outcome::Pending => Verdict::Neutral,
            Outcome::Success => Verdict::Passed,
            Outcome::Failed | Outcome::Aborted => Verdict::Failed,
        }
    }

    /// The name a page shows (a pending target has no stored name).
    pub fn shown(self) -> &'static str {
        match self {
            Outcome::Pending => "PENDING",
            o => o.as_str(),
        }
    }
}

/// A test's status: Bazel's TestStatus, or not reported yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TestStatus {
    /// Nothing reported yet (stored as the empty string).
    #[default]
    Unreported,
    /// Did not run (or has not run yet), as Bazel's summary says.
    NoStatus,
    /// Passed (every run, shard and final attempt).
    Passed,
    /// Bazel's own FLAKY: failed, then passed on a retry.
    Flaky,
    /// Ran out of time.
    Timeout,
    /// Failed.
    Failed,
    /// Was cut short (Bazel was interrupted).
    Incomplete,
    /// The remote system failed to run it.
    RemoteFailure,
    /// Its build failed, so it did not run.
    FailedToBuild,
    /// Bazel stopped before testing (e.g. another target failed to build).
    ToolHaltedBeforeTesting,
}

named!(TestStatus, unknown: NoStatus, {
    Unreported => "",
    NoStatus => "NO_STATUS",
    Passed => "PASSED",
    Flaky => "FLAKY",
    Timeout => "TIMEOUT",
    Failed => "FAILED",
    Incomplete => "INCOMPLETE",
    RemoteFailure => "REMOTE_FAILURE",
    FailedToBuild => "FAILED_TO_BUILD",
    ToolHaltedBeforeTesting => "TOOL_HALTED_BEFORE_TESTING",
});

impl TestStatus {
    /// How it reads: a test that did not run is no failure.
    pub fn verdict(self) -> Verdict {
        match self {
            TestStatus::Unreported | TestStatus::NoStatus => Verdict::Neutral,
            TestStatus::Passed => Verdict::Passed,
            TestStatus::Flaky => Verdict::Flaky,
            TestStatus::Timeout
            | TestStatus::Failed
            | TestStatus::Incomplete
            | TestStatus::RemoteFailure
            | TestStatus::FailedToBuild
            | TestStatus::ToolHaltedBeforeTesting => Verdict::Failed,
        }
    }

    /// Bazel's status of a TestResult or TestSummary.
    pub fn of(status: crate::proto::bep::TestStatus) -> Self {
        TestStatus::from_name(status.as_str_name())
    }

    /// Whether a run with this status passed (flaky ones did, at last).
    pub fn passed(self) -> bool {
        matches!(self, TestStatus::Passed | TestStatus::Flaky)
    }

    /// `column IN ('FAILED', ...)`: [`TestStatus::is_failure`] as an SQL
    /// condition over stored names, for the SQL that counts failures.
    pub fn failure_sql(column: &str) -> String {
        let names: Vec<String> = TestStatus::ALL
            .iter()
            .filter(|s| s.is_failure())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!("{column} IN ({})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_as_before() {
        for s in TestStatus::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<TestStatus>(&json).unwrap(), *s);
        }
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.as_str()), *o);
        }
        for s in Status::ALL {
            assert_eq!(Status::from_name(s.as_str()), *s);
        }
        assert_eq!(
            serde_json::to_string(&Status::InProgress).unwrap(),
            "\"IN_PROGRESS\""
        );
    }

    #[test]
    fn one_failure_rule() {
        let failing: Vec<&str> = TestStatus::ALL
            .iter()
            .filter(|s| s.is_failure())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            failing,
            [
                "TIMEOUT",
                "FAILED",
                "INCOMPLETE",
                "REMOTE_FAILURE",
                "FAILED_TO_BUILD",
                "TOOL_HALTED_BEFORE_TESTING"
            ]
        );
        assert!(!TestStatus::NoStatus.is_failure());
        assert!(!TestStatus::Flaky.is_failure());
        assert!(Outcome::Aborted.is_failure() && Outcome::Failed.is_failure());
        assert!(!Outcome::Pending.is_failure());
        assert!(Status::Failed.is_failure() && !Status::Disconnected.is_failure());
        assert_eq!(
            TestStatus::failure_sql("status"),
            "status IN ('TIMEOUT', 'FAILED', 'INCOMPLETE', 'REMOTE_FAILURE', 'FAILED_TO_BUILD', 'TOOL_HALTED_BEFORE_TESTING')"
        );
    }
}
