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
    let mut draining = false;
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                // Stop receiving, but answer what was already routed here: a request dropped
                // now leaves its caller (a POST /v1/sagas) waiting for its timeout, then a 503.
                draining = true;
                if let Err(error) = requests.drain().await {
                    tracing::warn!(%error, "look-ups not drained");
                    return Ok(());
                }
                continue;
            }
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
