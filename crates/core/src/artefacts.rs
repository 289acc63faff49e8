//! What each stage records when it is done: one serde struct per stage,
//! written by the stage into the journal (`stage_events.artefacts`) and read
//! back by `status` and the report. A field renamed here is renamed for all
//! three; an old journal's missing field reads as its default.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A stage's artefacts: serialisable, with a one-line summary.
pub trait Artefacts: Serialize + DeserializeOwned {
    fn summary(&self) -> &str;
    /// As the journal stores it.
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("artefacts serialise to JSON")
    }
    /// From the journal; an error names the stage's artefacts that do not fit.
    fn from_value(v: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(v.clone()).map_err(|e| {
            Error::failure(format!(
                "the journal's artefacts do not read as {} ({e})",
                std::any::type_name::<Self>()
            ))
        })
    }
}

/// Implements [`Artefacts`] for structs with a `summary: String` field.
#[macro_export]
macro_rules! artefacts {
    ($($ty:ty),+) => {
        $(impl $crate::artefacts::Artefacts for $ty {
            fn summary(&self) -> &str {
                &self.summary
            }
        })+
    };
}

/// The artefacts of a stage that records nothing but its summary
/// (clear-target).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub summary: String,
}

artefacts!(Summary);

/// What the retirement does, journaled before it is done (the detail of its
/// item): its undo and its check read it back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Retirement {
    /// driver postgres: the database, its new name, and whether PUBLIC had CONNECT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_as: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_connect: Option<bool>,
    /// driver docker: the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub destroyed: bool,
    pub final_dump: FinalDump,
}

/// The source's final dump, taken before it is retired.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FinalDump {
    pub path: String,
    pub sha256: String,
}

/// decommission-source: what became of the source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DecommissionResult {
    pub summary: String,
    /// None: nothing was retired (driver none, or already retired).
    #[serde(flatten)]
    pub retirement: Option<Retirement>,
}

artefacts!(DecommissionResult);
