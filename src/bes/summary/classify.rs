//! What a published event is: its kind and target label, from its id,
//! for the event log and the pages' filters.

use prost::Message;

use super::BAZEL_EVENT_TYPE;
use crate::proto::bep;
use crate::proto::bes_v1 as v1;

/// The build_event_stream id variant's name: the event's kind.
fn kind_of(id: Option<&bep::BuildEventId>) -> &'static str {
    use bep::build_event_id::Id;
    match id.and_then(|i| i.id.as_ref()) {
        None => "unknown",
        Some(id) => match id {
            Id::Unknown(_) => "unknown",
            Id::Progress(_) => "progress",
            Id::Started(_) => "started",
            Id::Pattern(_) => "pattern",
            Id::TargetCompleted(_) => "target_completed",
            Id::ActionCompleted(_) => "action_completed",
            Id::TestSummary(_) => "test_summary",
            Id::TestResult(_) => "test_result",
            Id::BuildFinished(_) => "build_finished",
            Id::PatternSkipped(_) => "pattern_skipped",
            Id::UnstructuredCommandLine(_) => "unstructured_command_line",
            Id::OptionsParsed(_) => "options_parsed",
            Id::NamedSet(_) => "named_set",
            Id::WorkspaceStatus(_) => "workspace_status",
            Id::Configuration(_) => "configuration",
            Id::TargetConfigured(_) => "target_configured",
            Id::Fetch(_) => "fetch",
            Id::StructuredCommandLine(_) => "structured_command_line",
            Id::UnconfiguredLabel(_) => "unconfigured_label",
            Id::BuildToolLogs(_) => "build_tool_logs",
            Id::ConfiguredLabel(_) => "configured_label",
            Id::BuildMetrics(_) => "build_metrics",
            Id::Workspace(_) => "workspace",
            Id::BuildMetadata(_) => "build_metadata",
            Id::ConvenienceSymlinksIdentified(_) => "convenience_symlinks_identified",
            Id::TargetSummary(_) => "target_summary",
            Id::ExecRequest(_) => "exec_request",
            Id::TestProgress(_) => "test_progress",
        },
    }
}

/// The target label an event is about, if any.
pub fn label_of(id: Option<&bep::BuildEventId>) -> String {
    use bep::build_event_id::Id;
    match id.and_then(|i| i.id.as_ref()) {
        Some(Id::TargetCompleted(t)) => t.label.clone(),
        Some(Id::TargetConfigured(t)) => t.label.clone(),
        Some(Id::TestResult(t)) => t.label.clone(),
        Some(Id::TestSummary(t)) => t.label.clone(),
        Some(Id::TargetSummary(t)) => t.label.clone(),
        Some(Id::ActionCompleted(a)) => a.label.clone(),
        Some(Id::UnconfiguredLabel(u)) => u.label.clone(),
        Some(Id::ConfiguredLabel(c)) => c.label.clone(),
        _ => String::new(),
    }
}

/// Classifies a google.devtools.build.v1 event: `(kind, label, decoded Bazel
/// event)`. An undecodable Bazel payload yields kind `undecodable`.
pub fn classify(event: &v1::BuildEvent) -> (String, String, Option<bep::BuildEvent>) {
    use v1::build_event::Event;
    match &event.event {
        Some(Event::BazelEvent(any)) if any.type_url == BAZEL_EVENT_TYPE => {
            match bep::BuildEvent::decode(&any.value[..]) {
                Ok(bep) => (
                    kind_of(bep.id.as_ref()).to_string(),
                    label_of(bep.id.as_ref()),
                    Some(bep),
                ),
                Err(_) => ("undecodable".to_string(), String::new(), None),
            }
        }
        Some(Event::BazelEvent(_)) => ("bazel_event".into(), String::new(), None),
        Some(Event::InvocationAttemptStarted(_)) => {
            ("invocation_attempt_started".into(), String::new(), None)
        }
        Some(Event::InvocationAttemptFinished(_)) => {
            ("invocation_attempt_finished".into(), String::new(), None)
        }
        Some(Event::BuildEnqueued(_)) => ("build_enqueued".into(), String::new(), None),
        Some(Event::BuildFinished(_)) => ("build_finished_lifecycle".into(), String::new(), None),
        Some(Event::ConsoleOutput(_)) => ("console_output".into(), String::new(), None),
        Some(Event::ComponentStreamFinished(_)) => {
            ("component_stream_finished".into(), String::new(), None)
        }
        Some(Event::BuildExecutionEvent(_)) => {
            ("build_execution_event".into(), String::new(), None)
        }
        Some(Event::SourceFetchEvent(_)) => ("source_fetch_event".into(), String::new(), None),
        None => ("empty".into(), String::new(), None),
    }
}
