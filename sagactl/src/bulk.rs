//! Bulk `cancel` and `retry`: every saga a filter matches. First it lists what matches and
//! shows it; then it asks (a terminal), takes `--yes`, or refuses (no terminal, no `--yes`).
//! Then it acts in bounded calls of `POST /v1/sagas/cancel|retry`, with a progress bar.
//!
//! Each call is bounded twice: by `limit`, and by a window of creation times cut from the
//! listing, newest first, `--batch` sagas per window. Repeating the same call until `more` is
//! false would not end for cancel: a cancelled saga stays `running` until its step in flight
//! answers, so it would match again. Windows never overlap, so every listed saga is acted on
//! at most once, and a saga created after the listing is in no window: the command acts on
//! what was shown. `more` of a call then only says that a window holds sagas the listing did
//! not (they reached the state since); the summary says so.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use chrono::{DateTime, Duration, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cli::OperateArgs;
use crate::client::{ApiClient, Call};
use crate::error::CliError;
use crate::filter::{FilterArgs, rfc3339};
use crate::model::{BulkOutcome, Saga, read};
use crate::output::{self, Output};
use crate::sagas::{self, Operation};

/// Sagas shown before asking.
const PREVIEW: usize = 10;

/// The most one bulk call may act on (the API's bound).
const CALL_MAX: usize = 5_000;

/// Sagas per listing page while counting.
const LIST_PAGE: &str = "500";

/// A range of creation times, `[after, before)`, and how many listed sagas it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    after: DateTime<Utc>,
    before: DateTime<Utc>,
    count: usize,
}

/// Cuts `created` (creation times, newest first) into windows of about `batch` sagas. Sagas
/// created in the same microsecond never straddle two windows, so a window may hold more.
fn windows(created: &[DateTime<Utc>], batch: usize) -> Vec<Window> {
    let Some(newest) = created.first() else {
        return Vec::new();
    };
    let batch = batch.max(1);
    let mut before = *newest + Duration::microseconds(1);
    let mut windows = Vec::new();
    for chunk in created.chunks(batch) {
        let Some(&after) = chunk.last() else {
            continue;
        };
        if after >= before {
            continue;
        }
        let from = created.partition_point(|t| *t >= before);
        let to = created.partition_point(|t| *t >= after);
        windows.push(Window {
            after,
            before,
            count: to - from,
        });
        before = after;
    }
    windows
}

/// What the listing found.
struct Listing {
    /// Creation times, newest first.
    created: Vec<DateTime<Utc>>,
    /// The first few sagas, to show.
    preview: Vec<Saga>,
}

async fn list_all(client: &ApiClient, filter: &FilterArgs) -> Result<Listing, CliError> {
    let mut listing = Listing {
        created: Vec::new(),
        preview: Vec::new(),
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut query = filter.query();
        query.push(("limit".into(), LIST_PAGE.into()));
        if let Some(cursor) = &cursor {
            query.push(("cursor".into(), cursor.clone()));
        }
        let (items, next) = sagas::page(client, query).await?;
        for item in &items {
            let saga: Saga = read("a listed saga", item)?;
            let created = saga.created_at.ok_or_else(|| CliError::Unexpected {
                what: format!("listed saga {}", saga.id),
                detail: "no created_at".into(),
            })?;
            listing.created.push(created);
            if listing.preview.len() < PREVIEW {
                listing.preview.push(saga);
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok(listing),
        }
    }
}

/// `sagactl cancel|retry --filter...`.
pub async fn bulk(
    client: &ApiClient,
    out: Output,
    operation: Operation,
    args: OperateArgs,
) -> Result<(), CliError> {
    let verb = operation.verb();
    let mut filter = args.filter;
    filter
        .state
        .get_or_insert_with(|| operation.default_state().to_owned());
    let listing = list_all(client, &filter).await?;
    let listed = listing.created.len();
    let mut total = BulkOutcome::default();
    let mut calls = 0_usize;
    if listed == 0 {
        out.note(format!("no saga matches ({})", filter.describe()));
        return summary(out, verb, listed, calls, &total);
    }
    preview(&listing, listed, &filter);
    confirm(verb, listed, args.yes)?;

    let progress = if out.is_json() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(listed as u64)
    };
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} sagas ({elapsed})")
    {
        progress.set_style(style.progress_chars("=> "));
    }
    progress.set_prefix(verb);
    for window in windows(&listing.created, usize::from(args.batch)) {
        let mut body = filter.body();
        body.insert("created_after".into(), json!(rfc3339(window.after)));
        body.insert("created_before".into(), json!(rfc3339(window.before)));
        body.insert("limit".into(), json!(window.count.clamp(1, CALL_MAX)));
        let answer = client
            .send(Call::post(&["v1", "sagas", verb]).json(Value::Object(body)))
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                progress.abandon();
                out.note(format!(
                    "stopped after {calls} calls: {} sagas matched, {} affected so far",
                    total.matched, total.affected
                ));
                return Err(error);
            }
        };
        let outcome: BulkOutcome = read(&format!("POST /v1/sagas/{verb}"), &answer)?;
        calls += 1;
        progress.inc(outcome.matched);
        total.matched += outcome.matched;
        total.affected += outcome.affected;
        total.more |= outcome.more;
        for (code, n) in outcome.refused {
            *total.refused.entry(code).or_default() += n;
        }
    }
    progress.finish_and_clear();
    summary(out, verb, listed, calls, &total)
}

/// Shows what matches, on stderr (stdout is for the result).
fn preview(listing: &Listing, listed: usize, filter: &FilterArgs) {
    let mut table = output::table(&["ID", "TYPE", "STATE", "CREATED"]);
    for saga in &listing.preview {
        table.add_row(vec![
            saga.id.clone(),
            saga.saga_type.clone(),
            saga.state.clone(),
            output::time(saga.created_at),
        ]);
    }
    eprintln!("{}", table.trim_fmt());
    if listed > listing.preview.len() {
        eprintln!("... and {} more", listed - listing.preview.len());
    }
    eprintln!(
        "{listed} saga{} match ({})",
        if listed == 1 { "" } else { "s" },
        filter.describe()
    );
}

/// Asks on a terminal; `--yes` skips the question; without a terminal it refuses.
fn confirm(verb: &str, listed: usize, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotConfirmed(format!(
            "not going to {verb} {listed} sagas without a confirmation: stdin is not a terminal; \
             pass --yes to {verb} them"
        )));
    }
    let confirmed = dialoguer::Confirm::new()
        .with_prompt(format!("{verb} these {listed} sagas?"))
        .default(false)
        .interact()
        .map_err(|e| {
            CliError::NotConfirmed(format!("could not ask ({e}); pass --yes to {verb} them"))
        })?;
    if confirmed {
        Ok(())
    } else {
        Err(CliError::NotConfirmed(format!(
            "nothing done: {verb} not confirmed"
        )))
    }
}

fn summary(
    out: Output,
    verb: &str,
    listed: usize,
    calls: usize,
    total: &BulkOutcome,
) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&json!({
            "listed": listed,
            "matched": total.matched,
            "affected": total.affected,
            "refused": total.refused,
            "more": total.more,
            "calls": calls,
        }));
    }
    if listed == 0 {
        return Ok(());
    }
    out.line(format!(
        "{verb}: {} of {listed} listed sagas affected ({} matched when acted on, {calls} call{})",
        total.affected,
        total.matched,
        if calls == 1 { "" } else { "s" }
    ))?;
    let refused: BTreeMap<_, _> = total.refused.iter().filter(|(_, n)| **n > 0).collect();
    for (code, n) in refused {
        out.line(format!("  {n} refused: {code}"))?;
    }
    if total.more {
        out.line(
            "more sagas match now than were listed (they reached the state since): run the \
             command again for them",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).expect("time")
    }

    #[test]
    fn windows_cover_every_listed_saga_once_newest_first() {
        let created = [at(50), at(40), at(30), at(20), at(10)];
        assert_eq!(
            windows(&created, 2),
            [
                Window {
                    after: at(40),
                    before: at(51),
                    count: 2
                },
                Window {
                    after: at(20),
                    before: at(40),
                    count: 2
                },
                Window {
                    after: at(10),
                    before: at(20),
                    count: 1
                },
            ]
        );
        assert_eq!(
            windows(&created, 100),
            [Window {
                after: at(10),
                before: at(51),
                count: 5
            }]
        );
        assert!(windows(&[], 3).is_empty());
    }

    #[test]
    fn sagas_of_the_same_microsecond_stay_in_one_window() {
        let created = [at(50), at(40), at(40), at(40), at(10)];
        let cut = windows(&created, 2);
        assert_eq!(
            cut,
            [
                Window {
                    after: at(40),
                    before: at(51),
                    count: 4
                },
                Window {
                    after: at(10),
                    before: at(40),
                    count: 1
                },
            ]
        );
        assert_eq!(cut.iter().map(|w| w.count).sum::<usize>(), created.len());
    }
}
