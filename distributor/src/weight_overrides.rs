//! [`WeightOverrides`]: the operators' per-analyzer weight overrides, read from the KV bucket
//! `logdist_weights` (key = analyzer id, value = the weight as a decimal number, e.g. `0.05`).
//!
//! An override replaces the weight an analyzer announces as the weight routing uses (its
//! *effective* weight) until the key is deleted; `0` drains the analyzer (online, it finishes
//! what it has, it is routed nothing new). Every replica polls the bucket, so one
//! `nats kv put logdist_weights 3 0.05` reaches all of them, each starting a new epoch.
//!
//! Pure logic: the event loop hands over each KV entry and acts on the returned change. A value
//! that is not a valid weight, or a key that is not a valid analyzer id, is refused: counted,
//! reported, and the analyzer keeps the effective weight it had, so a typo never moves traffic.

use std::collections::BTreeMap;

use logdist::protocol::control::{validate_name, MAX_WEIGHT};

/// Why an override was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverrideError {
    #[error("weight override key {key:?} is not an analyzer id (1-64 of A-Z a-z 0-9 - _)")]
    BadKey { key: String },
    #[error("weight override {value:?} for analyzer {key} is not a number from 0 to {MAX_WEIGHT} (0 drains the analyzer)")]
    BadValue { key: String, value: String },
}

/// Parses an override value: a decimal number from 0 to [`MAX_WEIGHT`] (surrounding whitespace
/// allowed). `key` only names the analyzer in the error.
pub fn parse_weight(key: &str, value: &str) -> Result<f64, OverrideError> {
    let refused = || OverrideError::BadValue {
        key: key.to_string(),
        value: value.chars().take(64).collect(),
    };
    let weight: f64 = value.trim().parse().map_err(|_| refused())?;
    if weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&weight) {
        // "-0" parses as a negative zero; store a plain 0.
        Ok(weight.abs())
    } else {
        Err(refused())
    }
}

/// What an accepted entry changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OverrideChange {
    /// The override of this analyzer is new or different: routing must be rebuilt.
    Changed { from: Option<f64>, to: Option<f64> },
    /// The same value again (a replay, or a put of the value in force).
    Unchanged,
}

/// One entry of the bucket: a put (`value` is `Some`) or a delete/purge, at `revision`.
#[derive(Debug, Clone, Copy)]
pub struct OverrideEntry<'a> {
    pub key: &'a str,
    pub revision: u64,
    pub value: Option<&'a [u8]>,
}

/// The overrides in force, by analyzer id, and the count of refused entries.
#[derive(Debug, Clone, Default)]
pub struct WeightOverrides {
    overrides: BTreeMap<String, f64>,
    /// Newest revision applied per key: the watch replays what the first read already applied
    /// (and a re-created watch replays everything), and a replay is neither applied nor counted.
    revisions: BTreeMap<String, u64>,
    refused: u64,
}

impl WeightOverrides {
    pub fn new() -> Self {
        WeightOverrides::default()
    }

    /// Applies one bucket entry, unless an entry of the same key at that revision or a newer one
    /// was applied already (then `Unchanged`).
    pub fn apply(&mut self, entry: OverrideEntry) -> Result<OverrideChange, OverrideError> {
        let seen = self.revisions.get(entry.key).copied().unwrap_or(0);
        if entry.revision != 0 && entry.revision <= seen {
            return Ok(OverrideChange::Unchanged);
        }
        self.revisions.insert(entry.key.to_string(), entry.revision);
        match entry.value {
            Some(value) => self.put(entry.key, value),
            None => Ok(self.delete(entry.key)),
        }
    }

    /// A put of `value` under `key`.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<OverrideChange, OverrideError> {
        let result = validate_name("id", key)
            .map_err(|_| OverrideError::BadKey {
                key: key.chars().take(72).collect(),
            })
            .and_then(|()| parse_weight(key, &String::from_utf8_lossy(value)));
        let weight = result.inspect_err(|_| self.refused += 1)?;
        let from = self.overrides.insert(key.to_string(), weight);
        Ok(if from == Some(weight) {
            OverrideChange::Unchanged
        } else {
            OverrideChange::Changed {
                from,
                to: Some(weight),
            }
        })
    }

    /// A delete (or purge) of `key`: back to the announced weight.
    pub fn delete(&mut self, key: &str) -> OverrideChange {
        match self.overrides.remove(key) {
            Some(from) => OverrideChange::Changed {
                from: Some(from),
                to: None,
            },
            None => OverrideChange::Unchanged,
        }
    }

    /// The weight routing uses for analyzer `id`, which announces `announced`.
    pub fn effective(&self, id: &str, announced: f64) -> f64 {
        self.overrides.get(id).copied().unwrap_or(announced)
    }

    /// Entries refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_zero_to_the_maximum() {
        assert_eq!(parse_weight("3", "0.05"), Ok(0.05));
        assert_eq!(parse_weight("3", " 2\n"), Ok(2.0));
        assert_eq!(parse_weight("3", "0"), Ok(0.0));
        assert_eq!(
            parse_weight("3", "-0").map(f64::to_bits),
            Ok(0f64.to_bits())
        );
        assert_eq!(parse_weight("3", "1e6"), Ok(MAX_WEIGHT));
        for bad in ["", "abc", "-1", "NaN", "inf", "1e7", "0.5 kg", "0,5"] {
            let err = parse_weight("3", bad).unwrap_err();
            assert!(
                err.to_string().contains("not a number from 0 to"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn put_delete_and_refusals() {
        let mut o = WeightOverrides::new();
        assert_eq!(o.effective("3", 0.2), 0.2);
        assert_eq!(
            o.put("3", b"0.05"),
            Ok(OverrideChange::Changed {
                from: None,
                to: Some(0.05)
            })
        );
        assert_eq!(o.effective("3", 0.2), 0.05);
        assert_eq!(o.put("3", b"0.05"), Ok(OverrideChange::Unchanged));
        // A bad value is refused and counted; the override in force stays.
        assert!(matches!(
            o.put("3", b"lots"),
            Err(OverrideError::BadValue { .. })
        ));
        assert!(matches!(
            o.put("a.b", b"1"),
            Err(OverrideError::BadKey { .. })
        ));
        assert_eq!(o.refused(), 2);
        assert_eq!(o.effective("3", 0.2), 0.05);
        assert_eq!(
            o.delete("3"),
            OverrideChange::Changed {
                from: Some(0.05),
                to: None
            }
        );
        assert_eq!(o.delete("3"), OverrideChange::Unchanged);
        assert_eq!(o.effective("3", 0.2), 0.2);
    }

    #[test]
    fn replayed_revisions_are_neither_applied_nor_counted() {
        let mut o = WeightOverrides::new();
        let entry = |revision, value: Option<&'static [u8]>| OverrideEntry {
            key: "3",
            revision,
            value,
        };
        assert!(matches!(
            o.apply(entry(5, Some(b"0.5"))),
            Ok(OverrideChange::Changed { .. })
        ));
        assert_eq!(
            o.apply(entry(5, Some(b"0.5"))),
            Ok(OverrideChange::Unchanged)
        );
        assert!(o.apply(entry(6, Some(b"oops"))).is_err());
        assert_eq!(
            o.apply(entry(6, Some(b"oops"))),
            Ok(OverrideChange::Unchanged)
        );
        assert_eq!((o.refused(), o.effective("3", 1.0)), (1, 0.5));
        assert!(matches!(
            o.apply(entry(7, None)),
            Ok(OverrideChange::Changed { to: None, .. })
        ));
        assert_eq!(o.effective("3", 1.0), 1.0);
    }
}
