//! Histograms, percentiles and the open-loop send schedule.
//!
//! Coordinated omission: a closed-loop client that waits for a reply before sending the next
//! request stops sending while the server stalls, so the stall shows up in one sample instead of
//! in every request that should have been sent meanwhile. The latency scenario is open-loop: send
//! `j` is due at `start + j / rate` whatever happened before, and its latency is measured from
//! that scheduled time, not from when it actually left.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest trackable latency: 60 s, in nanoseconds.
const MAX_NS: u64 = 60_000_000_000;

/// A histogram of nanoseconds, 3 significant digits, 1 ns to 60 s (larger values saturate).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// Records a duration (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = (d.as_nanos().min(MAX_NS as u128) as u64).max(1);
    h.saturating_record(ns);
}

/// Summary of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        // No sample, no percentile: NaN is reported as null, not as a (perfect) 0 µs.
        let empty = h.is_empty();
        let us = |ns: u64| if empty { f64::NAN } else { ns as f64 / 1000.0 };
        Percentiles {
            count: h.len(),
            mean_us: if empty { f64::NAN } else { h.mean() / 1000.0 },
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Offset of send number `j` from the start, at `rate` sends per second in total.
pub fn scheduled_offset(j: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(j as f64 / rate)
}

/// Which connection carries send number `j` (round robin, so each connection sends at
/// `rate / connections` with the connections' sends evenly interleaved).
pub fn connection_for(j: u64, connections: u32) -> usize {
    (j % connections as u64) as usize
}

/// Latency of one request corrected for coordinated omission: from when it was due, however
/// late it actually left (a sender that fell behind must not hide its lateness); from when it
/// left if that was earlier than due (the sender wakes a little early to be on time).
pub fn corrected_latency(scheduled: Instant, sent: Instant, replied: Instant) -> Duration {
    replied.saturating_duration_since(scheduled.min(sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_uniform_values() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        // 3 significant digits: within 0.1 %.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(p.p50_us, 500.0), "{p:?}");
        assert!(close(p.p90_us, 900.0), "{p:?}");
        assert!(close(p.p99_us, 990.0), "{p:?}");
        assert!(close(p.p999_us, 999.0), "{p:?}");
        assert!(close(p.max_us, 1000.0), "{p:?}");
        assert!(close(p.mean_us, 500.5), "{p:?}");
    }

    #[test]
    fn an_empty_histogram_has_no_percentiles() {
        let p = Percentiles::of(&histogram());
        assert_eq!(p.count, 0);
        assert!(
            p.p50_us.is_nan() && p.p99_us.is_nan() && p.mean_us.is_nan(),
            "{p:?}"
        );
    }

    #[test]
    fn out_of_range_values_saturate() {
        let mut h = histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(3600));
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 59_000_000_000);
    }

    #[test]
    fn schedule_spreads_rate_over_connections() {
        // 1000/s over 4 connections: each connection every 4 ms, interleaved 1 ms apart.
        assert_eq!(scheduled_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(scheduled_offset(1000, 1000.0), Duration::from_secs(1));
        let sends_of_conn_1: Vec<Duration> = (0..12)
            .filter(|&j| connection_for(j, 4) == 1)
            .map(|j| scheduled_offset(j, 1000.0))
            .collect();
        assert_eq!(
            sends_of_conn_1,
            vec![
                Duration::from_millis(1),
                Duration::from_millis(5),
                Duration::from_millis(9)
            ]
        );
    }

    /// A server that answers in 100 µs but stalls from 0.5 s to 1.5 s, under 1000 requests/s
    /// for 2 s. Measured from the scheduled time, every request that was due during the stall
    /// counts its wait, so more than a tenth of the samples exceed 250 ms. A closed-loop client (send,
    /// wait, send) records a single slow sample and its p99 hides the stall.
    #[test]
    fn corrected_latency_sees_a_stall() {
        let service = Duration::from_micros(100);
        let (stall_from, stall_until) = (Duration::from_millis(500), Duration::from_millis(1500));
        let serve = |start: Duration| {
            let start = if start >= stall_from && start < stall_until {
                stall_until
            } else {
                start
            };
            start + service
        };

        let start = Instant::now();
        let mut corrected = histogram();
        let mut server_free = Duration::ZERO;
        for j in 0..2000 {
            let scheduled = scheduled_offset(j, 1000.0);
            let replied = serve(scheduled.max(server_free));
            server_free = replied;
            // Sent on time: the server's stall is what delays the reply.
            let (due, sent) = (start + scheduled, start + scheduled);
            record(
                &mut corrected,
                corrected_latency(due, sent, start + replied),
            );
        }
        let c = Percentiles::of(&corrected);
        // Requests due before the stall are fast (about 44 % of them).
        assert!(corrected.value_at_quantile(0.40) < 1_000_000, "{c:?}");
        assert!(
            c.p90_us > 250_000.0,
            "corrected p90 must show the stall: {c:?}"
        );
        assert!(c.max_us >= 999_000.0, "{c:?}");

        let mut naive = histogram();
        let mut clock = Duration::ZERO;
        while clock < Duration::from_secs(2) {
            let replied = serve(clock);
            record(&mut naive, replied - clock);
            clock = replied;
        }
        let n = Percentiles::of(&naive);
        assert!(n.p99_us < 1_000.0, "closed loop hides the stall: {n:?}");
        assert!(n.max_us >= 999_000.0, "{n:?}");
    }

    #[test]
    fn a_late_send_counts_from_when_it_was_due_and_an_early_one_from_when_it_left() {
        let due = Instant::now();
        let ms = Duration::from_millis;
        // The load generator itself stalled 300 ms: the reply 100 µs after the late send
        // still counts the 300 ms the request waited to leave.
        let late = due + ms(300);
        let replied = late + Duration::from_micros(100);
        assert_eq!(
            corrected_latency(due, late, replied),
            ms(300) + Duration::from_micros(100)
        );
        // Woke 50 µs early: measured from the actual send, never less than the round trip.
        let early = due - Duration::from_micros(50);
        let replied = early + ms(1);
        assert_eq!(corrected_latency(due, early, replied), ms(1));
    }
}
