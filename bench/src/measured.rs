//! What a run measured: its scenarios and every client's result in them, with the
//! look-ups the tables and the plot share.

use serde::Serialize;

use crate::clients::ClientKind;
use crate::run::RunResult;
use crate::scenario::{Scenario, ScenarioKind};

#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub scenarios: Vec<Scenario>,
    pub results: Vec<RunResult>,
}

impl Measured {
    pub fn result(&self, scenario: &str, client: ClientKind) -> Option<&RunResult> {
        self.results
            .iter()
            .find(|r| r.scenario == scenario && r.client == client)
    }

    /// `(N, scenario id)` of the scaling runs, in order.
    pub fn scaling_sizes(&self) -> Vec<(usize, String)> {
        self.scenarios
            .iter()
            .filter(|s| s.kind == ScenarioKind::Scaling)
            .map(|s| (s.nodes, s.id.clone()))
            .collect()
    }

    /// The clients that ran in any of the scenarios `ids`.
    pub fn clients_in<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<ClientKind> {
        let ids: Vec<&str> = ids.collect();
        let mut clients: Vec<ClientKind> = self
            .results
            .iter()
            .filter(|r| ids.contains(&r.scenario.as_str()))
            .map(|r| r.client)
            .collect();
        clients.sort();
        clients.dedup();
        clients
    }
}
