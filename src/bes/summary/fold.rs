//! The fold of Bazel's events into an [`Invocation`], one function per
//! payload kind: each reads its event and changes only what it is about.

use super::*;

fn option(text: &str) -> String {
    crate::text::cut(text, MAX_OPTION_LEN)
}

impl Invocation {
    /// Folds one decoded Bazel event: its patterns, then its payload.
    pub(super) fn apply_bazel(&mut self, ev: &bep::BuildEvent) {
        use bep::build_event::Payload;
        use bep::build_event_id::Id;
        let id = ev.id.as_ref().and_then(|i| i.id.as_ref());
        let label = label_of(ev.id.as_ref());
        if let Some(Id::Pattern(p)) = id {
            for pattern in &p.pattern {
                if !self.patterns.contains(pattern) {
                    self.patterns.push(pattern.clone());
                }
            }
        }
        let Some(payload) = &ev.payload else { return };
        let labelled = !label.is_empty();
        match payload {
            Payload::Started(s) => self.started(s),
            Payload::WorkspaceStatus(ws) => self.workspace_status(ws),
            Payload::Configured(c) if labelled => self.configured(&label, c),
            Payload::Completed(c) if labelled => self.completed(&label, c),
            Payload::Aborted(_) if matches!(id, Some(Id::TargetCompleted(_))) => {
                self.target(&label).outcome = Outcome::Aborted;
            }
            Payload::TestResult(r) if labelled => self.test_result(&label, id, r),
            Payload::TestSummary(s) if labelled => self.test_summary(&label, s),
            Payload::Action(a) if !a.success => self.failed_action(&label, a),
            Payload::OptionsParsed(o) => {
                self.options = o
                    .explicit_cmd_line
                    .iter()
                    .take(MAX_OPTIONS)
                    .map(|s| option(s))
                    .collect();
            }
            Payload::BuildMetrics(m) => self.build_metrics(m),
            Payload::BuildMetadata(m) => self.build_metadata(m),
            Payload::BuildToolLogs(logs) => self.tool_logs(logs),
            Payload::NamedSetOfFiles(set) => {
                for f in &set.files {
                    self.link(f);
                }
            }
            Payload::Finished(f) => self.finished(f),
            _ => {}
        }
    }

    fn started(&mut self, s: &bep::BuildStarted) {
        self.command = s.command.clone();
        self.started_at = s
            .start_time
            .as_ref()
            .map(|t| crate::time::saturating_ms(t.seconds, t.nanos))
            .filter(|ms| *ms > 0)
            .unwrap_or(s.start_time_millis);
    }

    fn workspace_status(&mut self, ws: &bep::WorkspaceStatus) {
        for item in &ws.item {
            match item.key.as_str() {
                "BUILD_USER" => self.user = item.value.clone(),
                "BUILD_HOST" => self.host = item.value.clone(),
                key => self.source(key, &item.value, false),
            }
        }
    }

    fn build_metadata(&mut self, m: &bep::BuildMetadata) {
        for (key, value) in &m.metadata {
            self.source(key, value, true);
            if self.metadata.len() < MAX_METADATA || self.metadata.contains_key(key) {
                self.metadata.insert(
                    crate::text::cut(key, MAX_METADATA_KEY),
                    crate::text::cut(value, MAX_METADATA_VALUE),
                );
                self.metadata_changed = true;
            }
        }
    }

    /// Where the sources came from, by the keys teams set in
    /// `--build_metadata` or their workspace status script; metadata, the
    /// explicit one, wins over workspace status.
    fn source(&mut self, key: &str, value: &str, explicit: bool) {
        let field = match key {
            "REPO_URL" | "STABLE_REPO_URL" => &mut self.repository,
            "BRANCH_NAME" | "GIT_BRANCH" | "STABLE_GIT_BRANCH" => &mut self.branch,
            "COMMIT_SHA" | "STABLE_COMMIT_SHA" => &mut self.commit,
            _ => return,
        };
        if explicit || field.is_empty() {
            *field = crate::text::cut(value, MAX_METADATA_VALUE);
        }
    }

    fn configured(&mut self, label: &str, c: &bep::TargetConfigured) {
        self.target(label).kind = c.target_kind.clone();
        // A test target of a test command has NO STATUS until a result
        // says otherwise, as in Bazel's summary: a test that never runs
        // (the build failed elsewhere first) is not shown as its build's
        // success. Bazel sends its TestResult and TestSummary as aborted
        // events then, or none at all.
        if c.test_size != 0 && matches!(self.command.as_str(), "test" | "coverage") {
            let test = self.test(label);
            if test.status == TestStatus::Unreported {
                test.status = TestStatus::NoStatus;
            }
        }
    }

    fn completed(&mut self, label: &str, c: &bep::TargetComplete) {
        let mut blobs: Vec<String> = c
            .important_output
            .iter()
            .filter_map(|f| match &f.file {
                Some(bep::file::File::Uri(uri)) => {
                    blob_of_uri(uri).map(|(h, s)| format!("{h}/{s}"))
                }
                _ => None,
            })
            .collect();
        blobs.sort();
        let target = self.target(label);
        target.outcome = if c.success {
            Outcome::Success
        } else {
            Outcome::Failed
        };
        if !blobs.is_empty() {
            target.fingerprint = hex::encode(
                &crate::digest::DigestFunction::Sha256
                    .digest_of(blobs.join("\n").as_bytes())
                    .hash[..8],
            );
        }
        for f in &c.important_output {
            self.link(f);
        }
    }

    fn test_result(
        &mut self,
        label: &str,
        id: Option<&bep::build_event_id::Id>,
        r: &bep::TestResult,
    ) {
        let duration = r
            .test_attempt_duration
            .as_ref()
            .map(|d| crate::time::saturating_ms(d.seconds, d.nanos))
            .unwrap_or(r.test_attempt_duration_millis);
        let cached =
            r.cached_locally || r.execution_info.as_ref().is_some_and(|e| e.cached_remotely);
        let (run, shard, attempt) = match id {
            Some(bep::build_event_id::Id::TestResult(t)) => (t.run, t.shard, t.attempt),
            _ => (0, 0, 0),
        };
        let status = TestStatus::of(r.status());
        let log = r
            .test_action_output
            .iter()
            .find(|f| f.name == "test.log")
            .and_then(|f| match &f.file {
                Some(bep::file::File::Uri(uri)) => Some(uri.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let test = self.test(label);
        test.attempts += 1;
        test.duration_ms = test.duration_ms.saturating_add(duration);
        test.cached = cached;
        if matches!(test.status, TestStatus::Unreported | TestStatus::NoStatus) {
            test.status = status;
        }
        // A pass after a failure of the same run and shard.
        if status == TestStatus::Passed
            && test
                .attempt_list
                .iter()
                .any(|a| a.run == run && a.shard == shard && a.status != TestStatus::Passed)
        {
            test.flaky = true;
        }
        if test.attempt_list.len() < MAX_ATTEMPTS {
            test.attempt_list.push(Attempt {
                run,
                shard,
                attempt,
                status,
                duration_ms: duration,
                cached,
                log,
            });
        }
        for f in &r.test_action_output {
            self.link(f);
        }
    }

    fn test_summary(&mut self, label: &str, s: &bep::TestSummary) {
        let test = self.test(label);
        test.status = TestStatus::of(s.overall_status());
        test.shards = u32::try_from(s.shard_count).unwrap_or(0);
        if test.status == TestStatus::Flaky {
            test.flaky = true;
        }
    }

    fn failed_action(&mut self, label: &str, a: &bep::ActionExecuted) {
        if self.failed_actions.len() >= MAX_FAILED_ACTIONS {
            return;
        }
        let uri = |f: &Option<bep::File>| match f.as_ref().and_then(|f| f.file.as_ref()) {
            Some(bep::file::File::Uri(uri)) => uri.clone(),
            _ => String::new(),
        };
        self.failed_actions.push(FailedAction {
            label: if a.label.is_empty() {
                label.to_string()
            } else {
                a.label.clone()
            },
            mnemonic: a.r#type.clone(),
            exit_code: a.exit_code,
            stdout: uri(&a.stdout),
            stderr: uri(&a.stderr),
            argv: a.command_line.iter().take(64).map(|s| option(s)).collect(),
        });
    }

    fn build_metrics(&mut self, m: &bep::BuildMetrics) {
        let Some(a) = &m.action_summary else { return };
        self.actions_executed = a.actions_executed;
        self.actions_created = a.actions_created;
        let by_runner: i64 = a
            .runner_count
            .iter()
            .filter(|r| r.name == "remote cache hit")
            .map(|r| i64::from(r.count))
            .sum();
        self.runners = a
            .runner_count
            .iter()
            .take(64)
            .map(|r| Runner {
                name: r.name.clone(),
                count: i64::from(r.count),
            })
            .collect();
        self.cache_hits = if a.runner_count.is_empty() {
            a.remote_cache_hits
        } else {
            by_runner
        };
    }

    fn tool_logs(&mut self, logs: &bep::BuildToolLogs) {
        for f in &logs.log {
            self.link(f);
            if let Some(bep::file::File::Uri(uri)) = &f.file
                && self.tool_logs.len() < MAX_LINKS
            {
                self.tool_logs.push(Link {
                    name: f.name.clone(),
                    uri: uri.clone(),
                });
            }
        }
    }

    fn finished(&mut self, f: &bep::BuildFinished) {
        if let Some(code) = &f.exit_code {
            self.exit_code = Some(code.code);
            self.exit_code_name = code.name.clone();
        } else {
            self.exit_code = Some(if f.overall_success { 0 } else { 1 });
        }
        let finish = f
            .finish_time
            .as_ref()
            .map(|t| crate::time::saturating_ms(t.seconds, t.nanos))
            .filter(|ms| *ms > 0)
            .unwrap_or(f.finish_time_millis);
        if self.started_at > 0 && finish >= self.started_at {
            self.duration_ms = Some(finish - self.started_at);
        }
    }
}
