//! `sagactl definitions list`: the saga types the platform runs, each version, which one new
//! sagas start with, and the steps in order with their compensations and the pivot.

use crate::client::{ApiClient, Call};
use crate::error::CliError;
use crate::model::{Definition, read};
use crate::output::{self, Output};

/// `sagactl definitions list`.
pub async fn list(client: &ApiClient, out: Output) -> Result<(), CliError> {
    let answer = client.send(Call::get(&["v1", "definitions"])).await?;
    if out.is_json() {
        return out.json(&answer);
    }
    let definitions: Vec<Definition> = read("GET /v1/definitions", &answer["items"])?;
    if definitions.is_empty() {
        out.note("no definitions");
        return Ok(());
    }
    let mut table = output::table(&["TYPE", "VERSION", "LATEST", "STEPS (compensation)"]);
    for definition in definitions {
        let steps: Vec<String> = definition
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let mut line = format!("{}. {}", i + 1, step.name);
                if let Some(compensation) = &step.compensation {
                    line.push_str(&format!(" ({compensation})"));
                }
                if step.pivot {
                    line.push_str(" [pivot]");
                }
                line
            })
            .collect();
        table.add_row(vec![
            definition.saga_type,
            definition.version.to_string(),
            if definition.latest { "yes" } else { "" }.to_owned(),
            steps.join("\n"),
        ]);
    }
    out.table(&table)
}
