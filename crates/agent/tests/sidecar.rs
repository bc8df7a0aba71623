//! The sidecar against a fake host: in-process for behaviour, and as a real process for exit
//! codes and signals.

mod fake;

use std::process::Stdio;
use std::time::Duration;

use fake::{wait_until, Behaviour, FakeHost, CHANNEL, LLM_KEY, TOKEN};
use taos_agent::shutdown::{self, ShutdownTrigger};
use taos_agent::{Config, RunError};
use taos_proto::bridge::{Reply, ReplyKind};
use taos_proto::trace::TraceKind;
use tokio::task::JoinHandle;

fn start_agent(config: Config) -> (ShutdownTrigger, JoinHandle<Result<(), RunError>>) {
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(taos_agent::run(config, shutdown));
    (trigger, task)
}

async fn stop_agent(trigger: ShutdownTrigger, task: JoinHandle<Result<(), RunError>>) {
    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent stops promptly")
        .expect("the agent task does not panic")
        .expect("the agent ran");
}

/// Deltas, then one final whose content is the deltas joined; all for the delivery's trace
/// and channel.
fn assert_streamed_answer(replies: &[Reply], trace_id: &str, expected: &str) {
    let (last, deltas) = replies.split_last().expect("some replies");
    assert_eq!(last.kind, ReplyKind::Final, "{replies:?}");
    assert!(!deltas.is_empty());
    assert!(
        deltas.iter().all(|r| r.kind == ReplyKind::Delta),
        "{replies:?}"
    );
    let joined: String = deltas.iter().filter_map(|r| r.content.clone()).collect();
    assert_eq!(joined, expected);
    assert_eq!(last.content.as_deref(), Some(expected));
    for reply in replies {
        assert_eq!(reply.trace_id, trace_id);
        assert_eq!(reply.channel_id.as_deref(), Some(CHANNEL));
    }
}

#[tokio::test]
async fn delivery_is_answered_with_deltas_then_final() {
    let host = FakeHost::start().await;
    let mut config = host.config("small");
    config.system_prompt = Some("You are helpful.".to_string());
    let (trigger, task) = start_agent(config);

    let context = serde_json::json!([
        {"author_id": "user:ana", "author_type": "user", "content": "hi all"},
        {"author_id": "helper", "author_type": "agent", "content": "hello Ana"},
        {"author_id": "scout", "author_type": "agent", "content": "hey"},
    ]);
    let trace_id = host.deliver("how are you?", context);
    wait_until("the answer", || host.is_settled(&trace_id)).await;

    assert_streamed_answer(&host.replies_for(&trace_id), &trace_id, "Hello world!");
    let request = host.recorded(|r| r.llm_requests[0].clone());
    assert_eq!(request["model"], "small");
    assert_eq!(request["stream"], true);
    assert_eq!(
        host.recorded(|r| r.llm_trace_ids.clone()),
        vec![Some(trace_id.clone())]
    );
    assert_eq!(
        request["messages"],
        serde_json::json!([
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "user:ana: hi all"},
            {"role": "assistant", "content": "hello Ana"},
            {"role": "user", "content": "scout: hey"},
            {"role": "user", "content": "how are you?"},
        ])
    );
    stop_agent(trigger, task).await;
    assert_eq!(host.lifecycle_events(), vec!["start", "stop"]);
    assert!(host.recorded(|r| r.traces.iter().all(|t| t.kind == TraceKind::Lifecycle)));
}

#[tokio::test]
async fn deliveries_are_answered_one_at_a_time_in_order() {
    let host = FakeHost::start().await;
    let (trigger, task) = start_agent(host.config("small"));
    let first = host.deliver("one", serde_json::json!([]));
    let second = host.deliver("two", serde_json::json!([]));
    wait_until("both answers", || host.is_settled(&second)).await;

    let order: Vec<(String, ReplyKind)> = host.recorded(|r| {
        r.replies
            .iter()
            .map(|reply| (reply.trace_id.clone(), reply.kind))
            .collect()
    });
    let first_final = order
        .iter()
        .position(|(t, k)| *t == first && *k == ReplyKind::Final)
        .unwrap();
    assert!(order[..first_final].iter().all(|(t, _)| *t == first));
    assert!(order[first_final + 1..].iter().all(|(t, _)| *t == second));
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn falls_back_when_the_first_model_fails_before_any_text() {
    let host = FakeHost::start().await;
    host.set_model("broken", Behaviour::Fail500);
    let (trigger, task) = start_agent(host.config("broken,good"));
    let trace_id = host.deliver("hello?", serde_json::json!([]));
    wait_until("the answer", || host.is_settled(&trace_id)).await;

    assert_eq!(host.llm_models(), vec!["broken", "good"]);
    assert_streamed_answer(&host.replies_for(&trace_id), &trace_id, "Hello world!");
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn all_models_failing_gives_one_error_reply_and_an_error_trace() {
    let host = FakeHost::start().await;
    host.set_model("a", Behaviour::Fail500);
    host.set_model("b", Behaviour::Fail500);
    let (trigger, task) = start_agent(host.config("a,b"));
    let trace_id = host.deliver("hello?", serde_json::json!([]));
    wait_until("the error reply", || host.is_settled(&trace_id)).await;
    wait_until("the error trace", || {
        host.recorded(|r| r.traces.iter().any(|t| t.kind == TraceKind::Error))
    })
    .await;

    assert_eq!(host.llm_models(), vec!["a", "b"]);
    let replies = host.replies_for(&trace_id);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].kind, ReplyKind::Error);
    assert_eq!(replies[0].channel_id.as_deref(), Some(CHANNEL));
    assert!(replies[0].error.as_deref().unwrap().contains("500"));
    let errors: Vec<_> = host.recorded(|r| {
        r.traces
            .iter()
            .filter(|t| t.kind == TraceKind::Error)
            .cloned()
            .collect()
    });
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].trace_id.as_deref(), Some(trace_id.as_str()));
    assert_eq!(errors[0].channel_id.as_deref(), Some(CHANNEL));
    assert_eq!(errors[0].payload["stage"], "llm");
    assert!(errors[0].payload["message"]
        .as_str()
        .unwrap()
        .contains("upstream broke"));
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn exhausted_budget_is_reported_without_trying_fallbacks() {
    let host = FakeHost::start().await;
    host.set_model("first", Behaviour::Budget429);
    let (trigger, task) = start_agent(host.config("first,second"));
    let trace_id = host.deliver("hello?", serde_json::json!([]));
    wait_until("the error reply", || host.is_settled(&trace_id)).await;
    wait_until("the error trace", || {
        host.recorded(|r| r.traces.iter().any(|t| t.kind == TraceKind::Error))
    })
    .await;

    assert_eq!(host.llm_models(), vec!["first"]);
    let replies = host.replies_for(&trace_id);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].kind, ReplyKind::Error);
    assert!(replies[0].error.as_deref().unwrap().contains("budget"));
    // The code lets the host say it in words ("budget for this month is used up").
    assert_eq!(replies[0].error_code.as_deref(), Some("budget_exceeded"));
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn failure_after_text_was_shown_is_an_error_not_a_fallback() {
    let host = FakeHost::start().await;
    host.set_model("flaky", Behaviour::CutOff(vec!["Half an ans"]));
    let (trigger, task) = start_agent(host.config("flaky,good"));
    let trace_id = host.deliver("hello?", serde_json::json!([]));
    wait_until("the error reply", || host.is_settled(&trace_id)).await;

    assert_eq!(host.llm_models(), vec!["flaky"]);
    let kinds: Vec<ReplyKind> = host.replies_for(&trace_id).iter().map(|r| r.kind).collect();
    assert_eq!(kinds, vec![ReplyKind::Delta, ReplyKind::Error]);
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn reconnect_sends_last_event_id_and_does_not_repeat_answers() {
    let host = FakeHost::start().await;
    let (trigger, task) = start_agent(host.config("small"));
    let first = host.deliver("one", serde_json::json!([]));
    let second = host.deliver("two", serde_json::json!([]));
    wait_until("two answers", || {
        host.is_settled(&first) && host.is_settled(&second)
    })
    .await;

    host.drop_streams();
    wait_until("a reconnect", || {
        host.recorded(|r| r.last_event_ids.len() == 2)
    })
    .await;
    let third = host.deliver("three", serde_json::json!([]));
    wait_until("the third answer", || host.is_settled(&third)).await;

    assert_eq!(
        host.recorded(|r| r.last_event_ids.clone()),
        vec![None, Some("2".to_string())]
    );
    assert_eq!(host.llm_models().len(), 3);
    for trace_id in [&first, &second, &third] {
        let finals = host
            .replies_for(trace_id)
            .iter()
            .filter(|r| r.kind == ReplyKind::Final)
            .count();
        assert_eq!(finals, 1, "{trace_id}");
    }
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn refused_stream_is_retried() {
    let host = FakeHost::start().await;
    host.refuse_next_streams(2);
    let (trigger, task) = start_agent(host.config("small"));
    let trace_id = host.deliver("hello?", serde_json::json!([]));
    wait_until("the answer", || host.is_settled(&trace_id)).await;
    assert_eq!(host.recorded(|r| r.last_event_ids.len()), 3);
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn shutdown_abandons_a_slow_answer_and_marks_it_failed() {
    let host = FakeHost::start().await;
    host.set_model(
        "slow",
        Behaviour::Slow(vec!["I am ", "very ", "slow"], Duration::from_secs(30)),
    );
    let (trigger, task) = start_agent(host.config("slow"));
    let trace_id = host.deliver("hello?", serde_json::json!([]));
    wait_until("the first delta", || {
        !host.replies_for(&trace_id).is_empty()
    })
    .await;

    let stopping = tokio::time::Instant::now();
    stop_agent(trigger, task).await;
    // The grace is 300 ms in tests; the answer must not be waited for.
    assert!(stopping.elapsed() < Duration::from_secs(3));
    let kinds: Vec<ReplyKind> = host.replies_for(&trace_id).iter().map(|r| r.kind).collect();
    assert_eq!(kinds, vec![ReplyKind::Delta, ReplyKind::Error]);
    assert_eq!(host.lifecycle_events(), vec!["start", "stop"]);
}

#[tokio::test]
async fn missing_variable_exits_with_code_2_naming_it() {
    let host = FakeHost::start().await;
    let mut env = host.env("small");
    env.remove("TAOS_AGENT_TOKEN");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_taos-agent"))
        .env_clear()
        .envs(env)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TAOS_AGENT_TOKEN"), "{stderr}");
    assert!(!stderr.contains(LLM_KEY), "{stderr}");
}

#[tokio::test]
async fn process_answers_then_stops_cleanly_on_sigterm() {
    let host = FakeHost::start().await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taos-agent"))
        .env_clear()
        .envs(host.env("small"))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let trace_id = host.deliver("hello?", serde_json::json!([]));
    wait_until("the answer", || host.is_settled(&trace_id)).await;
    assert_streamed_answer(&host.replies_for(&trace_id), &trace_id, "Hello world!");

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the agent exits after SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(host.lifecycle_events(), vec!["start", "stop"]);
    // Even at debug level, no secret reaches the log.
    assert!(!stderr.contains(TOKEN), "{stderr}");
    assert!(!stderr.contains(LLM_KEY), "{stderr}");
}
