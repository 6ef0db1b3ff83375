//! The process's logging: set up once at start (text or JSON on stderr, filtered by
//! `RUST_LOG`, written by a thread of its own), what a reload that changes
//! `proxy.log_format` is told about it, and the throttle for lines that could repeat
//! thousands of times a second.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::LogFormat;
use crate::sync::lock;

/// Lines queued for stderr at most; more are dropped (and counted) until the reader catches
/// up. About 5 MiB of lines of 300 bytes: a burst of connections' lines rides through a
/// reader that pauses, a reader that stopped costs no more.
const QUEUED_LINES: usize = 16_384;

/// Bytes of lines queued at most, whatever their count: a line's length is partly the
/// client's (a certificate's words in a failed handshake's reason), so the lines alone do
/// not bound the memory a stopped reader costs.
const QUEUED_BYTES: usize = 8 << 20;

/// The queue of lines for stderr, for the metrics' count of lines it dropped.
static QUEUE: OnceLock<crate::log_queue::Queue> = OnceLock::new();

/// Log lines dropped so far because stderr's reader fell behind (see [`init`]).
pub(crate) fn dropped_lines() -> u64 {
    QUEUE.get().map_or(0, crate::log_queue::Queue::dropped)
}

/// The logging set up by [`init`]: lines still queued are written when it is dropped (for up
/// to a second), so hold it until the process is done logging.
pub struct Logging {
    queue: Option<crate::log_queue::Writing>,
}

/// How long exiting waits for the queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_millis(1_100);

impl Drop for Logging {
    /// Waits for the lines still queued, at most `FLUSH_WAIT` (1.1 s): a reader that stopped for
    /// good must not hold the exit.
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            queue.finish(FLUSH_WAIT);
        }
    }
}

/// Sets up the process's logging: `format`, filtered by `RUST_LOG` (`info` by default), on
/// stderr; `by_flag` if the command line chose the format (then the config's key does not
/// matter to reloads).
///
/// Lines are written to stderr by a thread of their own, from a queue of 16,384 lines (see
/// `log_queue`); a full queue drops lines, counted in
/// `wsgate_log_lines_dropped_total`.
#[must_use = "lines still queued are lost when it is dropped early"]
pub fn init(format: LogFormat, by_flag: bool) -> Logging {
    let _ = IN_USE.set((format, by_flag));
    let json = format == LogFormat::Json;
    // Blank, or nothing but commas: no directive at all, which would log errors only. Spaces
    // around a directive (`RUST_LOG='wsgate=debug '`) are no part of it.
    let from_env = std::env::var("RUST_LOG").ok().map(|v| {
        let directives = v.split(',').map(str::trim).filter(|d| !d.is_empty());
        directives.collect::<Vec<_>>().join(",")
    });
    let from_env = from_env.filter(|v| !v.is_empty());
    // A value that sets no level for wsgate's own lines would silence them all, its errors
    // and access lines included: a typo such as `warning` (read as a module's name) or
    // `wsgate:debug` is far likelier than that wish, so its directives go on top of `info`
    // (`off` silences everything, as ever).
    let on_top = from_env.as_deref().filter(|v| !sets_wsgates_level(v));
    let parsed = (from_env.as_deref()).map(|v| match on_top {
        Some(_) => tracing_subscriber::EnvFilter::try_new(format!("info,{v}")),
        None => tracing_subscriber::EnvFilter::try_new(v),
    });
    let mut filter = match &parsed {
        Some(Ok(filter)) => filter.clone(),
        _ => tracing_subscriber::EnvFilter::new("info"),
    };
    // Libraries' own warnings are for their developers, and wsgate logs what matters itself:
    // the file watcher's (a watch on a deleted folder going away, on every Kubernetes volume
    // update), and the TLS library's (any client can trigger one per connection, with an
    // odd SNI, say, and the connection's own line already names the TLS failure). Unless
    // RUST_LOG asks for them by name.
    for library in ["notify", "rustls"] {
        if from_env.as_deref().is_some_and(|v| names(v, library)) {
            continue;
        }
        if let Ok(quiet) = format!("{library}=error").parse() {
            filter = filter.add_directive(quiet);
        }
    }
    // Colours only for a person at a terminal: a file, a pipe or journald gets plain text.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // The writer's thread cannot be started (a pids limit reached): stderr written
    // directly, as better than no log at all.
    let (writer, queued) =
        match crate::log_queue::start(std::io::stderr(), QUEUED_LINES, QUEUED_BYTES) {
            Ok((queue, writing)) => (BoxMakeWriter::new(queue.clone()), Some((queue, writing))),
            Err(_) => (BoxMakeWriter::new(std::io::stderr), None),
        };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer)
        // A line that cannot be written (stderr a pipe whose reader is gone) is lost, not
        // reported: the library's report goes through `eprintln!`, which panics on the same
        // broken pipe, and would end the process mid-serving.
        .log_internal_errors(false);
    // `try_init`: a second set-up (a program embedding wsgate with its own logger) keeps the
    // first rather than panic.
    let set = match json {
        true => builder.json().flatten_event(true).try_init(),
        false => builder.fmt_fields(crate::log_text::TextFields).try_init(),
    };
    match (parsed, on_top) {
        (Some(Err(e)), _) => {
            tracing::warn!(error = %e, "RUST_LOG is not a valid filter; logging at info");
        }
        (Some(Ok(_)), Some(value)) if !means_wsgate(value) => tracing::warn!(
            rust_log = value,
            "RUST_LOG sets no level for wsgate's own lines (a word that is no level, such as `warning`, names a module): they are logged at info, its directives on top"
        ),
        _ => {}
    }
    let Some((queue, writing)) = queued.filter(|_| set.is_ok()) else {
        return Logging { queue: None };
    };
    let _ = QUEUE.set(queue);
    Logging {
        queue: Some(writing),
    }
}

/// Whether a `RUST_LOG` value sets the level of wsgate's own lines: a level for every target
/// (`warn`, `off`), or one for the `wsgate` target as a whole (`wsgate=debug`, `wsgate`, or a
/// prefix of it, as the filter matches targets: `ws=debug`); not one for a module of it only
/// (`wsgate::access_log=off` leaves the others without one), nor one inside spans
/// (`wsgate[conn]=debug`: wsgate's lines are in none).
fn sets_wsgates_level(filter: &str) -> bool {
    filter.split(',').map(str::trim).any(|directive| {
        let target = directive.split('=').next().unwrap_or_default();
        directive
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok()
            || (!target.is_empty() && !target.contains('[') && "wsgate".starts_with(target))
    })
}

/// Whether a `RUST_LOG` value that sets no level for wsgate's own lines is still about them:
/// it names wsgate or a module of it (`wsgate::access_log=off`), so taking its directives on
/// top of `info` is what it means, not a typo. Not inside spans (`wsgate[conn]=debug`):
/// wsgate's lines are in none, so that one would change nothing, unsaid.
fn means_wsgate(filter: &str) -> bool {
    let outside_spans = filter
        .split(',')
        .filter(|directive| !directive.contains('['));
    names(&outside_spans.collect::<Vec<_>>().join(","), "wsgate")
}

/// Whether a `RUST_LOG` value has a directive for `library` (or one of its modules), not
/// merely one mentioning it (`tokio_rustls` is not `rustls`).
fn names(filter: &str, library: &str) -> bool {
    filter.split(',').any(|directive| {
        let target = directive
            .trim()
            .split(['=', '['])
            .next()
            .unwrap_or_default();
        target == library || target.starts_with(&format!("{library}::"))
    })
}

/// The log format the process logs in, and whether `--log-format` chose it, as set up at
/// start (the logger is the process's, set up once): what a reload's `proxy.log_format` is
/// compared with.
static IN_USE: OnceLock<(LogFormat, bool)> = OnceLock::new();

/// A reload set `proxy.log_format` to `format`: say so if it is not the format in use,
/// rather than seem to ignore the key.
pub(crate) fn format_changed(format: LogFormat) {
    if let Some(&(in_use, false)) = IN_USE.get() {
        if format != in_use {
            let log_format = match format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            };
            tracing::warn!(log_format, "proxy.log_format is read at start only: the log format stays as it is until wsgate is restarted");
        }
    }
}

/// At most one log line a second for a condition that can repeat thousands of times a second
/// (descriptor exhaustion, overload), carrying the count of the lines left out.
#[derive(Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

/// How often a throttled line may be written.
const THROTTLE_WINDOW: Duration = Duration::from_secs(1);

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be written now.
    pub(crate) fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < THROTTLE_WINDOW => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The count of lines left out since the line written at `since`, if no line was written
    /// after it; taken as a line written now.
    fn left_over(&mut self, since: Option<Instant>) -> Option<u64> {
        if self.last != since || self.suppressed == 0 {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// How long past a window's end a burst must have been quiet for its tail's count to be
/// written on its own: an occurrence within it writes the count in its line instead.
const QUIET_AFTER: Duration = Duration::from_millis(100);

/// One occurrence of a condition throttled by `throttle`, shared by many tasks: `line` is
/// written now if the throttle allows, with the count of occurrences left out before it. The
/// first one left out after a line schedules `rest` for a little after that line's window
/// ends, with the count left out by then, unless a line was written meanwhile (which carried
/// the count): so the count of a burst's tail is written when the burst ends, not at the next
/// burst, which may never come, and a storm still gets one line a window.
pub(crate) fn throttled(
    throttle: &Arc<Mutex<Throttle>>,
    line: impl FnOnce(u64),
    rest: impl FnOnce(u64) + Send + 'static,
) {
    let mut guard = lock(throttle);
    if let Some(suppressed) = guard.ready() {
        drop(guard);
        return line(suppressed);
    }
    if guard.suppressed == 1 {
        let (throttle, since) = (throttle.clone(), guard.last);
        let due = since.map_or_else(Instant::now, |last| last + THROTTLE_WINDOW) + QUIET_AFTER;
        // Not on the server's task tracker: a count still pending at shutdown is not worth
        // holding the shutdown for (the metrics have it).
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let left_over = lock(&throttle).left_over(since);
            if let Some(suppressed) = left_over {
                rest(suppressed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_count_left_out_at_a_bursts_end_is_written_once_it_is_over() {
        let throttle = Arc::new(Mutex::new(Throttle::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut lines = Vec::new();
        let occur = |lines: &mut Vec<u64>| {
            let tx = tx.clone();
            throttled(
                &throttle,
                |n| lines.push(n),
                move |n| {
                    let _ = tx.send(n);
                },
            );
        };
        let start = Instant::now();
        // A burst: the first is written, the next 43 left out; their count is written a little
        // after the window, without another occurrence.
        for _ in 0..44 {
            occur(&mut lines);
        }
        assert_eq!(lines, [0]);
        assert_eq!(rx.recv().await, Some(43));
        assert_eq!(Instant::now() - start, THROTTLE_WINDOW + QUIET_AFTER);

        // A storm: one left out halfway through the window that count's line opened, then one
        // just past the window, which is written with that count; the first one's own
        // schedule then finds a line written since, and writes nothing.
        tokio::time::advance(THROTTLE_WINDOW / 2).await;
        occur(&mut lines);
        tokio::time::advance(THROTTLE_WINDOW / 2 + QUIET_AFTER / 2).await;
        occur(&mut lines);
        assert_eq!(lines, [0, 1]);
        let line_at = Instant::now();
        tokio::time::advance(QUIET_AFTER).await;
        assert!(rx.try_recv().is_err(), "a second line in one window");

        // Left out after that line, and the storm over: written once its window is.
        occur(&mut lines);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(Instant::now(), line_at + THROTTLE_WINDOW + QUIET_AFTER);
        assert_eq!(lines, [0, 1]);
        drop(tx);
        tokio::time::advance(THROTTLE_WINDOW * 3).await;
        assert!(rx.try_recv().is_err());
    }
}

#[cfg(test)]
mod rust_log_tests {
    use super::{means_wsgate, sets_wsgates_level};

    #[test]
    fn a_value_sets_wsgates_level_by_a_bare_level_or_its_whole_target() {
        let set = [
            "warn",
            "OFF",
            "info,hyper=debug",
            "wsgate=debug",
            "wsgate",
            "ws=debug",
            "3",
        ];
        for set in set {
            assert!(sets_wsgates_level(set), "{set}");
        }
        for unset in [
            "warning",
            "information",
            "wsgate:debug",
            "hyper=debug",
            "wsgate::access_log=off",
            "wsgatex=debug",
            "wsgate[conn]=debug",
        ] {
            assert!(!sets_wsgates_level(unset), "{unset}");
        }
        // On top of info, without a warning: a module of wsgate's named is meant.
        assert!(means_wsgate("wsgate::access_log=off") && means_wsgate("info,wsgate::listener"));
        for typo in [
            "warning",
            "wsgatex=debug",
            "wsgate[conn]=debug",
            "rustls=debug",
        ] {
            assert!(!means_wsgate(typo), "{typo}");
        }
    }
}
