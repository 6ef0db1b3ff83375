//! Results: a human-readable table, or JSON for scripts.

use serde_json::{Map, Number, Value};

use crate::procstat::CpuWindow;
use crate::stats::Percentiles;

/// One scenario's results, in insertion order.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    rows: Vec<Row>,
    /// Why the figures do not measure the target, if they do not (see [`Report::fail`]).
    failure: Option<String>,
}

/// Rounds to 3 decimals, or below 1 to 3 significant digits: 3 decimals would print a small
/// figure (a `--rate` of 0.000001, a CPU time per operation) as 0.
fn round(value: f64) -> f64 {
    if value == 0.0 || value.abs() >= 1.0 || !value.is_finite() {
        return (value * 1000.0).round() / 1000.0;
    }
    let scale = 10f64.powi(2 - value.abs().log10().floor() as i32);
    (value * scale).round() / scale
}

#[derive(Debug, Clone)]
struct Row {
    key: String,
    value: Value,
    unit: &'static str,
}

/// /proc's unit of CPU time (USER_HZ = 100).
const TICK_US: u64 = 10_000;

/// Proxy CPU below this many µs (50 ticks) is coarse: a tick is over 2 % of it.
const COARSE_CPU_US: u64 = 50 * TICK_US;

impl Report {
    pub fn new(scenario: &'static str, target: &str) -> Report {
        Report {
            scenario,
            target: target.to_string(),
            rows: Vec::new(),
            failure: None,
        }
    }

    /// Marks the run as failed: its figures do not measure the target. The report is still
    /// printed, since what was measured helps find out why, and then the run ends with `why` as
    /// its error. The first reason given is kept.
    pub fn fail(&mut self, why: impl Into<String>) -> &mut Self {
        self.failure.get_or_insert_with(|| why.into());
        self
    }

    /// The reason given to [`Report::fail`], if any.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Adds a number (rounded to 3 decimals, or below 1 to 3 significant digits; non-finite
    /// becomes null).
    pub fn num(&mut self, key: &str, value: f64, unit: &'static str) -> &mut Self {
        let v = Number::from_f64(round(value))
            .map(Value::Number)
            .unwrap_or(Value::Null);
        self.push(key, v, unit)
    }

    pub fn int(&mut self, key: &str, value: u64, unit: &'static str) -> &mut Self {
        self.push(key, Value::from(value), unit)
    }

    pub fn text(&mut self, key: &str, value: &str) -> &mut Self {
        self.push(key, Value::from(value), "")
    }

    fn push(&mut self, key: &str, value: Value, unit: &'static str) -> &mut Self {
        self.rows.push(Row {
            key: key.to_string(),
            value,
            unit,
        });
        self
    }

    /// Looks a value up (tests, scripts).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.rows.iter().find(|r| r.key == key).map(|r| &r.value)
    }

    /// Adds latency percentiles with a key prefix.
    pub fn percentiles(&mut self, prefix: &str, p: &Percentiles) -> &mut Self {
        self.num(&format!("{prefix}p50_us"), p.p50_us, "µs")
            .num(&format!("{prefix}p90_us"), p.p90_us, "µs")
            .num(&format!("{prefix}p99_us"), p.p99_us, "µs")
            .num(&format!("{prefix}p99.9_us"), p.p999_us, "µs")
            .num(&format!("{prefix}max_us"), p.max_us, "µs")
            .num(&format!("{prefix}mean_us"), p.mean_us, "µs")
    }

    /// Adds proxy and tool CPU for `ops` operations over the window.
    /// `ops` may be fractional (megabytes moved, say).
    /// The proxy's CPU time in the window, with figures per `op` over `ops` operations; a
    /// note on stderr when that time is a few of /proc's ticks (the figures are that coarse).
    pub fn cpu(&mut self, window: &CpuWindow, ops: f64, op: &str) -> &mut Self {
        let per = |us: u64| {
            if ops > 0.0 {
                us as f64 / ops
            } else {
                f64::NAN
            }
        };
        if window.proxy_lost {
            self.fail("a process given with --pid ended during the run (did the proxy crash?): no CPU figure for it");
        }
        // No CPU at all over this many operations, or while this tool spent a tenth of a
        // second pushing them through (megabytes moved, say, count few operations), is no
        // proxy's: the PID of a wrapper (a shell, `taskset`, a container runtime) rather than
        // of the process doing the work.
        if window.proxy_us == Some(0) && (ops >= 1000.0 || window.tool_us >= 100_000) {
            let counted = match op {
                "mb" => format!("{ops:.0} MB"),
                _ => format!("{ops:.0} {op}s"),
            };
            self.fail(format!(
                "the process given with --pid used no CPU over {counted}: is it the proxy itself, not a wrapper that started it?"
            ));
        }
        if let Some(proxy) = window.proxy_us.filter(|us| (1..COARSE_CPU_US).contains(us)) {
            let ticks = proxy / TICK_US;
            // The idle scenario has no --duration: its CPU is mostly the tunnels' opening.
            let steadier = match op {
                "tunnel" => "more tunnels (-n) steady them",
                _ => "a longer --duration steadies them",
            };
            crate::scenario::say(format_args!(
                "note: the proxy's CPU in the window is {ticks} ticks of 10 ms (/proc's unit): \
                 figures per {op} are ±{:.0} %; {steadier}",
                100.0 / ticks.max(1) as f64
            ));
        }
        if let Some(proxy) = window.proxy_us {
            self.int("proxy_cpu_us", proxy, "µs, in 10 ms ticks")
                .num(&format!("proxy_cpu_us_per_{op}"), per(proxy), "µs")
                .num(
                    "proxy_cpu_pct",
                    proxy as f64 / 1e4 / window.secs.max(1e-9),
                    "% of a core",
                );
        }
        if let Some(busy) = window.load_cpu_busy_pct {
            self.num(
                "load_cpu_busy_pct",
                busy,
                "% (the tool's CPU, all processes on it)",
            );
        }
        self.num(&format!("tool_cpu_us_per_{op}"), per(window.tool_us), "µs")
            .num(
                "tool_cpu_pct",
                window.tool_us as f64 / 1e4 / window.secs.max(1e-9),
                "% of a core",
            )
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), Value::from(self.scenario));
        m.insert("target".into(), Value::from(self.target.as_str()));
        for r in &self.rows {
            m.insert(r.key.clone(), r.value.clone());
        }
        Value::Object(m)
    }

    pub fn to_table(&self) -> String {
        let mut out = format!("{} → {}\n", self.scenario, self.target);
        let width = self.rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
        for r in &self.rows {
            let v = match &r.value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {:<width$}  {:>14} {}\n", r.key, v, r.unit));
        }
        out
    }

    /// Writes the report (JSON on one line, or the table) to `out` and flushes it. Fallible, not
    /// `println!`: a closed pipe or a full disk on stdout is the run's error, not a panic.
    pub fn write_to(&self, out: &mut impl std::io::Write, json: bool) -> std::io::Result<()> {
        if json {
            writeln!(out, "{}", self.to_json())?;
        } else {
            write!(out, "{}", self.to_table())?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table_and_json_in_order() {
        let mut r = Report::new("throughput", "ws://127.0.0.1:9001/");
        r.int("messages", 42, "")
            .num("msgs_per_s", 1234.56789, "msg/s");
        r.num("nan", f64::NAN, "");
        let j = r.to_json();
        assert_eq!(j["messages"], 42);
        assert_eq!(j["msgs_per_s"], 1234.568);
        assert!(j["nan"].is_null());
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["scenario", "target", "messages", "msgs_per_s", "nan"]
        );
        let mut written = Vec::new();
        r.write_to(&mut written, true).unwrap();
        assert_eq!(written, format!("{j}\n").into_bytes());
        let t = r.to_table();
        assert!(
            t.contains("msgs_per_s") && t.contains("1234.568 msg/s"),
            "{t}"
        );
    }

    #[test]
    fn small_figures_keep_three_significant_digits_not_three_decimals() {
        let mut r = Report::new("latency", "ws://127.0.0.1:9001/");
        for (key, value) in [
            ("a", 1e-6),
            ("b", 0.000_123_456),
            ("c", 0.5),
            ("d", -0.0421),
        ] {
            r.num(key, value, "");
        }
        let j = r.to_json();
        assert_eq!(
            [&j["a"], &j["b"], &j["c"], &j["d"]],
            [1e-6, 0.000123, 0.5, -0.0421]
        );
        assert!(r.to_table().contains("0.000123"), "{}", r.to_table());
    }

    #[test]
    fn a_failed_report_keeps_its_first_reason_and_its_rows() {
        let mut r = Report::new("latency", "ws://127.0.0.1:9001/");
        assert_eq!(r.failure(), None);
        r.int("messages", 0, "")
            .fail("no echo")
            .fail("later reason");
        assert_eq!(r.failure(), Some("no echo"));
        assert_eq!(r.to_json()["messages"], 0);
    }

    #[test]
    fn a_pid_without_cpu_over_many_operations_or_one_gone_fails_the_report() {
        let window = |proxy_us, proxy_lost| CpuWindow {
            secs: 1.0,
            proxy_us,
            proxy_lost,
            tool_us: 1,
            load_cpu_busy_pct: None,
        };
        // Few operations (megabytes) that took this tool real work: no proxy did none.
        let busy_tool = CpuWindow {
            tool_us: 500_000,
            ..window(Some(0), false)
        };
        let bulk = |w: CpuWindow| {
            let mut r = Report::new("bulk", "ws://127.0.0.1:9001/");
            r.cpu(&w, 354.0, "mb");
            r.failure().map(str::to_string)
        };
        assert!(bulk(busy_tool).is_some_and(|why| why.contains("used no CPU over 354 MB:")));
        let verdict = |w: CpuWindow, ops: f64| {
            let mut r = Report::new("throughput", "ws://127.0.0.1:9001/");
            r.cpu(&w, ops, "msg");
            r.failure().map(str::to_string)
        };
        let idle = verdict(window(Some(0), false), 5000.0).unwrap_or_default();
        assert!(idle.contains("used no CPU over 5000 msgs"), "{idle}");
        assert_eq!(
            verdict(window(Some(0), false), 10.0),
            None,
            "too few to tell"
        );
        assert_eq!(verdict(window(Some(7000), false), 5000.0), None);
        let gone = verdict(window(None, true), 5000.0).unwrap_or_default();
        assert!(gone.contains("ended during the run"), "{gone}");
    }
}
