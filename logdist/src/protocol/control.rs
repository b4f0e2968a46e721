//! Control messages on the control subjects (`logdist.control.<id>`): analyzer heartbeats and
//! withdrawals, their JSON form, and the checks a distributor applies before trusting one.
//!
//! ```json
//! {"id":"1","weight":0.5,"instance":"a1b2","state":"up","interval_ms":1000}
//! {"id":"1","instance":"a1b2","state":"down"}
//! ```

use serde::{Deserialize, Serialize};

/// Largest weight a heartbeat may announce. Weights are relative, so the cap only stops absurd
/// values (a forged `1e308` would starve every other analyzer).
pub const MAX_WEIGHT: f64 = 1_000_000.0;
/// Shortest heartbeat interval accepted, in milliseconds.
pub const MIN_INTERVAL_MS: u64 = 10;
/// Longest heartbeat interval accepted, in milliseconds (one hour).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// Longest analyzer id or instance name, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// One message on the control subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ControlMessage {
    /// "I am online with this weight; expect my next heartbeat within `interval_ms`."
    Up(Heartbeat),
    /// "This instance is going offline now."
    Down(Withdraw),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: String,
    pub weight: f64,
    pub instance: String,
    pub interval_ms: u64,
    /// The batch format version the instance reads ([`crate::protocol::batch`]); 0 (or absent)
    /// when it reads only single packets. Distributors coalesce packets for an analyzer only
    /// while every instance of it announces at least 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdraw {
    pub id: String,
    pub instance: String,
}

/// A distributor replica's confirmation of a withdrawal, published on
/// [`Names::withdrawn_subject`](crate::Names::withdrawn_subject) right after the replica applied
/// it: from then on it routes nothing to that instance, and everything it routed there before was
/// published before this confirmation, on the same connection, so it arrives first.
///
/// ```json
/// {"id":"1","instance":"a1b2","distributor":"dist-a"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalConfirmed {
    pub id: String,
    pub instance: String,
    /// Replica id of the confirming distributor (its `Logdist-Distributor` header value).
    pub distributor: String,
}

/// Why a control message was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("control message is not valid JSON of the expected form: {0}")]
    Malformed(String),
    #[error("{what} {value:?} is invalid: use 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '-' and '_'")]
    BadName { what: &'static str, value: String },
    #[error("weight {0} is invalid: it must be a finite number > 0 and at most {MAX_WEIGHT}")]
    BadWeight(f64),
    #[error("interval_ms {0} is out of range {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}")]
    BadInterval(u64),
}

impl ControlError {
    /// Stable short name for counters.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Malformed(_) => "malformed",
            ControlError::BadName { .. } => "bad_name",
            ControlError::BadWeight(_) => "bad_weight",
            ControlError::BadInterval(_) => "bad_interval",
        }
    }
}

/// Checks an analyzer id or instance name: it becomes part of a subject and a KV key, so it may
/// not contain dots, wildcards or spaces.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), ControlError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadName {
            what,
            value: value.chars().take(MAX_ID_LEN + 8).collect(),
        })
    }
}

/// Checks a weight: finite, > 0, at most [`MAX_WEIGHT`].
pub fn validate_weight(weight: f64) -> Result<(), ControlError> {
    if weight.is_finite() && weight > 0.0 && weight <= MAX_WEIGHT {
        Ok(())
    } else {
        Err(ControlError::BadWeight(weight))
    }
}

impl ControlMessage {
    /// Parses and validates a control message.
    pub fn parse(payload: &[u8]) -> Result<ControlMessage, ControlError> {
        let message: ControlMessage =
            serde_json::from_slice(payload).map_err(|e| ControlError::Malformed(e.to_string()))?;
        message.validate()?;
        Ok(message)
    }

    /// Applies the limits documented on this module's constants.
    pub fn validate(&self) -> Result<(), ControlError> {
        match self {
            ControlMessage::Up(hb) => {
                validate_name("id", &hb.id)?;
                validate_name("instance", &hb.instance)?;
                validate_weight(hb.weight)?;
                if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&hb.interval_ms) {
                    return Err(ControlError::BadInterval(hb.interval_ms));
                }
                Ok(())
            }
            ControlMessage::Down(w) => {
                validate_name("id", &w.id)?;
                validate_name("instance", &w.instance)
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }

    /// The analyzer id the message is about.
    pub fn id(&self) -> &str {
        match self {
            ControlMessage::Up(hb) => &hb.id,
            ControlMessage::Down(w) => &w.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_json_round_trip_matches_the_contract() {
        let text = r#"{"id":"1","weight":0.5,"instance":"abc","state":"up","interval_ms":1000}"#;
        let parsed = ControlMessage::parse(text.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            ControlMessage::Up(Heartbeat {
                id: "1".into(),
                weight: 0.5,
                instance: "abc".into(),
                interval_ms: 1000,
                batch: 0,
            })
        );
        let again = ControlMessage::parse(&parsed.to_json()).unwrap();
        assert_eq!(again, parsed);
        let value: serde_json::Value = serde_json::from_slice(&parsed.to_json()).unwrap();
        assert_eq!(value["state"], "up");
        assert!(value.get("batch").is_none(), "the old form, unchanged");
        let text =
            r#"{"id":"1","weight":0.5,"instance":"abc","state":"up","interval_ms":1000,"batch":1}"#;
        let ControlMessage::Up(hb) = ControlMessage::parse(text.as_bytes()).unwrap() else {
            panic!("a heartbeat");
        };
        assert_eq!(hb.batch, 1);
    }

    #[test]
    fn withdraw_json_round_trip_matches_the_contract() {
        let text = r#"{"id":"1","instance":"abc","state":"down"}"#;
        let parsed = ControlMessage::parse(text.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            ControlMessage::Down(Withdraw {
                id: "1".into(),
                instance: "abc".into()
            })
        );
        assert_eq!(ControlMessage::parse(&parsed.to_json()).unwrap(), parsed);
    }

    fn hb(id: &str, weight: f64, interval_ms: u64) -> ControlMessage {
        ControlMessage::Up(Heartbeat {
            id: id.into(),
            weight,
            instance: "i".into(),
            interval_ms,
            batch: 0,
        })
    }

    #[test]
    fn bad_heartbeats_are_rejected_with_a_reason() {
        for (msg, code) in [
            (hb("1", 0.0, 1000), "bad_weight"),
            (hb("1", -1.0, 1000), "bad_weight"),
            (hb("1", f64::NAN, 1000), "bad_weight"),
            (hb("1", f64::INFINITY, 1000), "bad_weight"),
            (hb("1", 2e6, 1000), "bad_weight"),
            (hb("1", 1.0, 0), "bad_interval"),
            (hb("1", 1.0, 7_200_000), "bad_interval"),
            (hb("", 1.0, 1000), "bad_name"),
            (hb("a.b", 1.0, 1000), "bad_name"),
            (hb("a*", 1.0, 1000), "bad_name"),
            (hb(&"x".repeat(65), 1.0, 1000), "bad_name"),
        ] {
            assert_eq!(msg.validate().unwrap_err().code(), code, "{msg:?}");
        }
        for text in [
            "{}",
            "nope",
            r#"{"id":"1","state":"sideways"}"#,
            r#"{"id":"1","weight":"x","instance":"i","state":"up","interval_ms":1}"#,
        ] {
            assert_eq!(
                ControlMessage::parse(text.as_bytes()).unwrap_err().code(),
                "malformed",
                "{text}"
            );
        }
    }

    #[test]
    fn good_names() {
        for name in ["1", "analyzer-7", "A_b", &"x".repeat(64)] {
            validate_name("id", name).unwrap();
        }
    }
}
