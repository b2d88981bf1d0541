//! Faults a simulated server can be told to have, at start (flags) or at run time
//! (`POST /sim/faults`, [`crate::SimHandle::set_faults`]).
//!
//! Why: a router is only as good as its behaviour when servers misbehave, and each way a real
//! vLLM server fails needs a switch a test can flip: refusing connections (dead, restarting),
//! accepting and never answering (hung), breaking a stream midway (crashed), answering errors
//! (overloaded, broken), serving bad or slow `/metrics`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Refuse connections: the port stays bound but does not listen, and open connections are
    /// cut, as when the process died. Clearing it brings the server back (its prefix cache empty).
    pub down: bool,
    /// Read requests and never answer them (the control routes under `/sim/` still answer).
    pub hang: bool,
    /// Cut every stream's connection after this many content chunks.
    pub die_after_chunks: Option<usize>,
    /// Fraction (0..1) of inference requests answered with `error_status` instead.
    pub error_rate: f64,
    /// 500, 503 or 429, in vLLM's error format.
    pub error_status: u16,
    /// Delay before answering `/metrics`, in milliseconds.
    pub metrics_delay_ms: u64,
    /// Answer `/metrics` with text that is not Prometheus exposition format.
    pub metrics_malformed: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            down: false,
            hang: false,
            die_after_chunks: None,
            error_rate: 0.0,
            error_status: 500,
            metrics_delay_ms: 0,
            metrics_malformed: false,
        }
    }
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be within 0..1, got {}",
                self.error_rate
            ));
        }
        if !matches!(self.error_status, 429 | 500 | 503) {
            return Err(format!(
                "error_status must be 429, 500 or 503, got {}",
                self.error_status
            ));
        }
        Ok(())
    }
}

/// A partial update of [`Faults`], the body of `POST /sim/faults`. Absent fields keep their
/// value; `"reset": true` first clears everything; `"down_for_ms": N` goes down for N ms.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsPatch {
    pub reset: bool,
    pub down: Option<bool>,
    pub down_for_ms: Option<u64>,
    pub hang: Option<bool>,
    #[serde(deserialize_with = "double_option")]
    pub die_after_chunks: Option<Option<usize>>,
    pub error_rate: Option<f64>,
    pub error_status: Option<u16>,
    pub metrics_delay_ms: Option<u64>,
    pub metrics_malformed: Option<bool>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(d).map(Some)
}

impl FaultsPatch {
    pub fn apply(&self, base: &Faults) -> Result<Faults, String> {
        let mut f = if self.reset {
            Faults::default()
        } else {
            base.clone()
        };
        if let Some(v) = self.down {
            f.down = v;
        }
        if self.down_for_ms.is_some() {
            f.down = true;
        }
        if let Some(v) = self.hang {
            f.hang = v;
        }
        if let Some(v) = self.die_after_chunks {
            f.die_after_chunks = v;
        }
        if let Some(v) = self.error_rate {
            f.error_rate = v;
        }
        if let Some(v) = self.error_status {
            f.error_status = v;
        }
        if let Some(v) = self.metrics_delay_ms {
            f.metrics_delay_ms = v;
        }
        if let Some(v) = self.metrics_malformed {
            f.metrics_malformed = v;
        }
        f.validate()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_given_fields_and_validates() {
        let base = Faults {
            hang: true,
            ..Default::default()
        };
        let p: FaultsPatch =
            serde_json::from_str(r#"{"error_rate":0.5,"error_status":503}"#).unwrap();
        let f = p.apply(&base).unwrap();
        assert!(f.hang);
        assert_eq!((f.error_rate, f.error_status), (0.5, 503));
        let p: FaultsPatch =
            serde_json::from_str(r#"{"reset":true,"die_after_chunks":3}"#).unwrap();
        assert_eq!(
            p.apply(&f).unwrap(),
            Faults {
                die_after_chunks: Some(3),
                ..Default::default()
            }
        );
        let p: FaultsPatch = serde_json::from_str(r#"{"die_after_chunks":null}"#).unwrap();
        assert_eq!(
            p.apply(&Faults {
                die_after_chunks: Some(3),
                ..Default::default()
            })
            .unwrap()
            .die_after_chunks,
            None
        );
        let p: FaultsPatch = serde_json::from_str(r#"{"error_status":404}"#).unwrap();
        assert!(p.apply(&base).is_err());
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"hnag":true}"#).is_err());
    }
}
