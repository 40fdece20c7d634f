//! Look-ups over core NATS: the orchestrator asks a worker, before it writes a saga, whether an
//! entity the saga's input names exists (`svc.<worker>.<what>`, request `{"id": ...}`, answer
//! `{"found": bool}`). Replicas share the subject through a queue group.

use std::future::Future;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Answers look-ups on `subject` (queue group `group`) with `answer` until `shutdown`.
pub async fn serve<F, Fut>(
    nats: async_nats::Client,
    subject: String,
    group: String,
    shutdown: CancellationToken,
    answer: F,
) -> anyhow::Result<()>
where
    F: Fn(serde_json::Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, sqlx::Error>> + Send,
{
    let mut requests = nats.queue_subscribe(subject, group).await?;
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            request = requests.next() => request,
        };
        let Some(request) = request else {
            return Ok(());
        };
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let id = serde_json::from_slice::<serde_json::Value>(&request.payload)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or_default();
        match answer(id).await {
            Ok(found) => {
                let body = serde_json::json!({ "found": found }).to_string();
                if let Err(error) = nats.publish(reply_to, body.into()).await {
                    tracing::warn!(%error, "look-up answer not sent");
                }
            }
            Err(error) => tracing::warn!(%error, "look-up failed; the caller times out"),
        }
    }
}
