//! Results: one JSON object per target (server, floor), ratios between them, the table.

use serde_json::{Map, Value};

/// The figures one scenario measured against one target, as a JSON object.
pub type Figures = Map<String, Value>;

/// `server / floor` for every numeric leaf present in both, nested the same way.
pub fn ratios(server: &Value, floor: &Value) -> Option<Value> {
    match (server, floor) {
        (Value::Number(s), Value::Number(f)) => {
            let (s, f) = (s.as_f64()?, f.as_f64()?);
            if f == 0.0 {
                return None;
            }
            Some(Value::from(((s / f) * 1000.0).round() / 1000.0))
        }
        (Value::Object(s), Value::Object(f)) => {
            let m: Map<String, Value> = s
                .iter()
                .filter_map(|(k, sv)| Some((k.clone(), ratios(sv, f.get(k)?)?)))
                .collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        _ => None,
    }
}

/// Numeric leaves as (dotted.name, value), in document order.
pub fn leaves(v: &Value) -> Vec<(String, f64)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((prefix.to_string(), x));
                }
            }
            Value::Object(m) => {
                for (k, v) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

/// The results table: one row per figure, columns server, floor and server/floor.
pub fn table(server: Option<&Value>, floor: Option<&Value>) -> String {
    let names: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for src in [server, floor].into_iter().flatten() {
            for (n, _) in leaves(src) {
                if !v.contains(&n) {
                    v.push(n);
                }
            }
        }
        v
    };
    let get = |src: Option<&Value>, name: &str| -> Option<f64> {
        src.and_then(|s| {
            leaves(s)
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, x)| x)
        })
    };
    let width = names.iter().map(String::len).max().unwrap_or(6).max(6);
    let mut out = format!(
        "{:<width$}  {:>14}  {:>14}  {:>12}\n",
        "figure", "server", "floor", "server/floor"
    );
    out.push_str(&"-".repeat(width + 46));
    out.push('\n');
    for n in &names {
        let s = get(server, n);
        let f = get(floor, n);
        let r = match (s, f) {
            (Some(s), Some(f)) if f != 0.0 => format!("{:.3}", s / f),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<width$}  {:>14}  {:>14}  {:>12}\n",
            n,
            s.map(fmt_num).unwrap_or_else(|| "-".into()),
            f.map(fmt_num).unwrap_or_else(|| "-".into()),
            r
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_follow_the_nesting() {
        let s =
            json!({"delivered_per_sec": 50.0, "latency_us": {"p50": 200.0, "p99": 10.0}, "x": "s"});
        let f = json!({"delivered_per_sec": 100.0, "latency_us": {"p50": 100.0, "p99": 0.0}});
        let r = ratios(&s, &f).expect("ratios");
        assert_eq!(
            r,
            json!({"delivered_per_sec": 0.5, "latency_us": {"p50": 2.0}})
        );
    }

    #[test]
    fn table_lists_every_figure() {
        let s = json!({"delivered_per_sec": 50.0, "latency_us": {"p50": 200.0}});
        let f = json!({"delivered_per_sec": 100.0});
        let t = table(Some(&s), Some(&f));
        assert!(t.contains("delivered_per_sec"));
        assert!(t.contains("0.500"));
        assert!(t.contains("latency_us.p50"));
        assert_eq!(t.lines().count(), 4);
    }
}
