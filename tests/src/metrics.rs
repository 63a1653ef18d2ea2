//! A parsed `/metrics` page.

use std::collections::HashMap;

/// A parsed `/metrics` page: `name` or `name{labels}` → value.
#[derive(Debug, Clone)]
pub struct Metrics(pub HashMap<String, u64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut m = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').expect("metric line: key value");
            // A histogram's sum is in seconds, a float: checked, not kept
            // (every other value is a count).
            let name = key.split('{').next().unwrap_or(key);
            if name.ends_with("_seconds_sum") {
                let v: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("metric value in {line:?}"));
                assert!(v.is_finite() && v >= 0.0, "metric value in {line:?}");
                continue;
            }
            let value: u64 = value
                .parse()
                .unwrap_or_else(|_| panic!("metric value in {line:?}"));
            m.insert(key.to_string(), value);
        }
        Metrics(m)
    }

    /// One value; panics if the node does not export it.
    pub fn get(&self, key: &str) -> u64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no metric {key} in {:?}", self.0.keys()))
    }

    /// `roomcast_bad_frames_total{reason="…"}`
    pub fn bad_frames(&self, reason: &str) -> u64 {
        self.get(&format!("roomcast_bad_frames_total{{reason=\"{reason}\"}}"))
    }
}
