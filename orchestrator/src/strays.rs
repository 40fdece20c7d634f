//! Strays: messages on a work-queue subject no consumer serves (`cmd.nobody.x`,
//! `notify.pigeon`) would stay in their stream forever. Every orchestrator looks for them now
//! and then, parks each on the dead-letter stream with its reason, and deletes it from its
//! stream. (Replies on unknown subjects are parked by the reply consumer itself; domain events
//! expire with their stream's age limit.)

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use contracts::topology::Stream;
use contracts::{Action, Topology};
use futures::TryStreamExt as _;
use runtime::dead_letter::{self, Letter};
use tokio_util::sync::CancellationToken;

/// The subjects some consumer serves, per work-queue stream.
fn served(topology: &Topology) -> [(Stream, BTreeSet<String>); 2] {
    [
        (
            Stream::Commands,
            Action::ALL
                .into_iter()
                .map(|a| topology.command_subject(a))
                .collect(),
        ),
        (
            Stream::Notifications,
            [topology.notify_subject("telegram")].into_iter().collect(),
        ),
    ]
}

/// Parks the strays of the work-queue streams; returns how many it parked.
pub async fn sweep(js: &jetstream::Context, topology: &Topology) -> anyhow::Result<usize> {
    let mut parked = 0;
    for (which, served) in served(topology) {
        let stream = js.get_stream(topology.stream(which)).await?;
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(topology.stream_subjects(which))
            .await?
            .try_collect()
            .await?;
        for (subject, count) in subjects {
            if served.contains(&subject) {
                continue;
            }
            for _ in 0..count {
                let Ok(message) = stream.get_last_raw_message_by_subject(&subject).await else {
                    break;
                };
                let letter = Letter {
                    subject: message.subject.clone(),
                    headers: message.headers.clone(),
                    payload: message.payload.clone(),
                    stream: topology.stream(which),
                    consumer: String::new(),
                    sequence: message.sequence,
                };
                let reason = format!("no consumer serves {subject}");
                dead_letter::publish(js, topology, letter, &reason)
                    .await
                    .map_err(|e| anyhow::anyhow!("parking a stray: {e}"))?;
                stream.delete_message(message.sequence).await?;
                parked += 1;
            }
        }
    }
    Ok(parked)
}

/// Sweeps every `every` until `shutdown`.
pub async fn run(
    js: jetstream::Context,
    topology: Topology,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match sweep(&js, &topology).await {
            Ok(0) => {}
            Ok(parked) => tracing::warn!(parked, "messages no consumer serves were parked"),
            Err(error) => tracing::warn!(%error, "looking for stray messages failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
