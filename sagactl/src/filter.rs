//! Which sagas a command is about: the filter flags `list`, bulk `cancel` and bulk `retry`
//! share (state, type, the search keys, creation times), and their two spellings on the wire:
//! query parameters of `GET /v1/sagas` and the JSON filter of `POST /v1/sagas/cancel|retry`.
//! Search keys beyond the three named flags are passed with `--key name=value`, so a new saga
//! type's keys need no new flag.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use clap::Args;
use serde_json::{Map, Value};

use crate::model::SAGA_STATES;

/// The filter flags.
#[derive(Args, Clone, Debug, Default)]
#[group(id = "filter", multiple = true)]
#[command(next_help_heading = "Which sagas")]
pub struct FilterArgs {
    /// Only sagas in this state.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SAGA_STATES))]
    pub state: Option<String>,
    /// Only sagas of this type (mission_reward, gift_exchange, ...).
    #[arg(long = "type", value_name = "TYPE")]
    pub saga_type: Option<String>,
    /// Only sagas of this customer.
    #[arg(long, value_name = "ID")]
    pub customer_id: Option<String>,
    /// Only sagas of this mission.
    #[arg(long, value_name = "ID")]
    pub mission_id: Option<String>,
    /// Only sagas of this gift.
    #[arg(long, value_name = "ID")]
    pub gift_id: Option<String>,
    /// Only sagas with this search key (any key a definition declares); repeatable.
    #[arg(long = "key", value_name = "NAME=VALUE", value_parser = parse_key)]
    pub keys: Vec<(String, String)>,
    /// Only sagas created at or after this time: RFC 3339 (2026-05-01T12:00:00Z) or an age
    /// (90s, 15m, 2h, 7d ago).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub created_after: Option<DateTime<Utc>>,
    /// Only sagas created before this time: RFC 3339 or an age (15m = a quarter of an hour ago).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub created_before: Option<DateTime<Utc>>,
}

impl FilterArgs {
    /// The search keys: the named flags, then `--key` ones.
    pub fn search_keys(&self) -> Vec<(String, String)> {
        [
            ("customer_id", &self.customer_id),
            ("mission_id", &self.mission_id),
            ("gift_id", &self.gift_id),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value.clone()?)))
        .chain(self.keys.iter().cloned())
        .collect()
    }

    /// The query parameters of `GET /v1/sagas`.
    pub fn query(&self) -> Vec<(String, String)> {
        let mut query = Vec::new();
        if let Some(state) = &self.state {
            query.push(("state".into(), state.clone()));
        }
        if let Some(saga_type) = &self.saga_type {
            query.push(("type".into(), saga_type.clone()));
        }
        query.extend(self.search_keys());
        if let Some(at) = self.created_after {
            query.push(("created_after".into(), rfc3339(at)));
        }
        if let Some(at) = self.created_before {
            query.push(("created_before".into(), rfc3339(at)));
        }
        query
    }

    /// The JSON filter of a bulk command.
    pub fn body(&self) -> Map<String, Value> {
        self.query()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    }

    /// The filter in words, for people: `state running, customer_id player-1`.
    pub fn describe(&self) -> String {
        let query = self.query();
        if query.is_empty() {
            return "no filter".into();
        }
        query
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A time as the API reads it: RFC 3339 in UTC with microseconds.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `name=value`.
fn parse_key(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

/// RFC 3339, or an age (`90s`, `15m`, `2h`, `7d`) before now.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    parse_time_at(text, Utc::now())
}

fn parse_time_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let bad = || {
        format!(
            "expected an RFC 3339 time (2026-05-01T12:00:00Z) or an age (90s, 15m, 2h, 7d), got {text:?}"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (amount, unit) = text.split_at(split);
    let amount: i64 = amount.parse().map_err(|_| bad())?;
    let age = match unit.trim() {
        "s" => Duration::try_seconds(amount),
        "m" => Duration::try_minutes(amount),
        "h" => Duration::try_hours(amount),
        "d" => Duration::try_days(amount),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_sub_signed(age).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_an_age() {
        let now = DateTime::parse_from_rfc3339("2026-05-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            parse_time_at("2026-04-30T10:00:00+02:00", now).map(rfc3339),
            Ok("2026-04-30T08:00:00.000000Z".into())
        );
        assert_eq!(
            parse_time_at("15m", now).map(rfc3339),
            Ok("2026-05-01T11:45:00.000000Z".into())
        );
        assert_eq!(
            parse_time_at("2d", now).map(rfc3339),
            Ok("2026-04-29T12:00:00.000000Z".into())
        );
        assert!(parse_time_at("yesterday", now).is_err());
        assert!(parse_time_at("5w", now).is_err());
    }

    #[test]
    fn a_filter_is_a_query_and_a_body() {
        let filter = FilterArgs {
            state: Some("running".into()),
            customer_id: Some("player-1".into()),
            keys: vec![("quest_id".into(), "q".into())],
            ..Default::default()
        };
        assert_eq!(
            filter.query(),
            [
                ("state".to_owned(), "running".to_owned()),
                ("customer_id".into(), "player-1".into()),
                ("quest_id".into(), "q".into())
            ]
        );
        assert_eq!(filter.body()["customer_id"], "player-1");
        assert_eq!(
            filter.describe(),
            "state running, customer_id player-1, quest_id q"
        );
        assert!(parse_key("novalue").is_err());
        assert_eq!(parse_key("a=b=c"), Ok(("a".into(), "b=c".into())));
    }
}
