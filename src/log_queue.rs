//! Log lines written to stderr by a thread of their own, from a bounded queue: a write to a
//! pipe whose reader is slow or stopped (a stalled log shipper, a terminal paused with
//! Ctrl-S) blocks, and written from the threads that serve, one connection's line would hold
//! up every connection, timeouts and health checks included. A full queue (in lines, or in
//! bytes: a line may be long, a client's certificate's words in it) drops lines instead, and
//! counts them. At exit, the lines queued are written, for as long as the
//! caller gives them.
//!
//! (tracing-appender's queue gives up on them after 100 ms when it is full, and says so on
//! stdout: a log shipper pausing a moment under back-pressure lost the shutdown's lines.)

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// What the writing thread is sent.
enum Msg {
    Line(Vec<u8>),
    /// Write what is queued before this, then stop.
    Stop,
}

/// The queue's sending side: a [`MakeWriter`] for the subscriber, one line per write.
#[derive(Clone)]
pub(crate) struct Queue {
    lines: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Bytes of the lines queued and not yet taken by the writing thread.
    queued: Arc<AtomicUsize>,
    /// The most bytes queued at once.
    most_bytes: usize,
}

/// The writing thread, as [`Writing::finish`] waits for it to write the lines queued.
pub(crate) struct Writing {
    lines: SyncSender<Msg>,
    stopped: Receiver<()>,
}

/// Starts the thread writing to `out` from a queue of at most `capacity` lines and
/// `most_bytes` bytes.
pub(crate) fn start(
    out: impl Write + Send + 'static,
    capacity: usize,
    most_bytes: usize,
) -> io::Result<(Queue, Writing)> {
    let (lines, taken) = mpsc::sync_channel(capacity);
    let (done, stopped) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (counted, lost) = (queued.clone(), dropped.clone());
    std::thread::Builder::new()
        .name("wsgate-log".into())
        .spawn(move || write_lines(&taken, (&counted, &lost), out, &done))?;
    let queue = Queue {
        lines: lines.clone(),
        dropped,
        queued,
        most_bytes,
    };
    Ok((queue, Writing { lines, stopped }))
}

/// Writes each line queued to `out`, those queued together in one write up to [`PIPE_BUF`]
/// bytes (fewer system calls when lines come in bursts), and never a line in two writes but
/// one longer than that.
fn write_lines(
    queued: &Receiver<Msg>,
    (bytes, dropped): (&AtomicUsize, &AtomicU64),
    mut out: impl Write,
    done: &mpsc::Sender<()>,
) {
    let mut batch = Vec::with_capacity(PIPE_BUF);
    // Lines in `batch`.
    let mut lines = 0;
    // A write that fails (stderr a pipe whose reader is gone) loses its lines: counted with
    // those the full queue drops, the one place left to say the log is missing lines.
    let mut write = |batch: &mut Vec<u8>, lines: &mut u64| {
        if !batch.is_empty() && out.write_all(batch).is_err() {
            dropped.fetch_add(*lines, Ordering::Relaxed);
        }
        batch.clear();
        *lines = 0;
    };
    while let Ok(first) = queued.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    bytes.fetch_sub(line.len(), Ordering::Relaxed);
                    if !batch.is_empty() && batch.len() + line.len() > PIPE_BUF {
                        write(&mut batch, &mut lines);
                    }
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                Msg::Stop => {
                    write(&mut batch, &mut lines);
                    let _ = done.send(());
                    return;
                }
            }
            next = queued.try_recv().ok();
        }
        write(&mut batch, &mut lines);
    }
}

/// The most a write to a pipe puts in it whole, never interleaved with another process's
/// writes to it (a wsgate taking over beside this one, on the same journald pipe): POSIX's
/// least, Linux's too.
const PIPE_BUF: usize = 4096;

impl Queue {
    /// Lines dropped so far because the queue was full, or lost in a write that failed.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Writing {
    /// Waits for the lines queued so far to be written, at most `wait`.
    pub(crate) fn finish(self, wait: Duration) {
        let Writing { lines, stopped } = self;
        // Behind every line queued, whenever the queue has room: sent from a thread of its
        // own, as a reader that stopped for good leaves it full for ever.
        let stop = std::thread::Builder::new()
            .name("wsgate-log-stop".into())
            .spawn(move || drop(lines.send(Msg::Stop)));
        if stop.is_ok() {
            let _ = stopped.recv_timeout(wait);
        }
    }
}

impl Write for &Queue {
    /// Queues `line` (the subscriber writes each line whole, in one call), or drops it if the
    /// queue is full.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let before = self.queued.fetch_add(line.len(), Ordering::Relaxed);
        let room = before + line.len() <= self.most_bytes;
        // Full, or the writing thread gone (its lines lost all the same): dropped.
        let sent = room && self.lines.try_send(Msg::Line(line.to_vec())).is_ok();
        if !sent {
            self.queued.fetch_sub(line.len(), Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = &'a Queue;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An output that keeps each write apart; a paused one takes nothing until resumed (a
    /// reader that pauses).
    #[derive(Clone, Default)]
    struct Out {
        paused: Arc<(Mutex<bool>, std::sync::Condvar)>,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Out {
        fn paused() -> Out {
            let out = Out::default();
            *out.paused.0.lock().unwrap() = true;
            out
        }

        fn resume(&self) {
            *self.paused.0.lock().unwrap() = false;
            self.paused.1.notify_all();
        }

        fn writes(&self) -> Vec<Vec<u8>> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl Write for Out {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let (paused, resumed) = &*self.paused;
            drop(resumed.wait_while(paused.lock().unwrap(), |p| *p).unwrap());
            self.writes.lock().unwrap().push(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_lines_and_at_exit_writes_every_line_it_took_once_the_reader_is_back() {
        let out = Out::paused();
        let (queue, writing) = start(out.clone(), 4, 1 << 20).unwrap();
        // The writer takes the first line and waits in its write; four more fill the queue.
        let mut taken = Vec::new();
        for n in 0..40 {
            let line = format!("line {n}\n");
            (&queue).write_all(line.as_bytes()).unwrap();
            taken.push(line);
        }
        assert!(queue.dropped() >= 35, "{}", queue.dropped());
        let finishing = std::thread::spawn(move || writing.finish(Duration::from_secs(30)));
        // The reader comes back while the exit waits.
        std::thread::sleep(Duration::from_millis(100));
        out.resume();
        finishing.join().unwrap();

        let got = String::from_utf8(out.writes().concat()).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len() as u64, 40 - queue.dropped(), "{got}");
        // In order, none cut: a subsequence of what was written.
        let mut written = taken.iter().map(|l| l.trim_end());
        for line in lines {
            assert!(written.any(|w| w == line), "{line} out of order in {got}");
        }
    }

    /// Long lines fill the queue by their bytes, however few: a stopped reader holds at most
    /// the budget, the rest dropped and counted; taken lines give their bytes back.
    #[test]
    fn a_queue_is_bounded_in_bytes_too() {
        let out = Out::paused();
        let (queue, writing) = start(out.clone(), 1024, 3 << 20).unwrap();
        let line = [vec![b'x'; (1 << 20) - 1], vec![b'\n']].concat();
        for _ in 0..100 {
            (&queue).write_all(&line).unwrap();
        }
        // The writer holds up to two (one waiting in its write, the next taken to batch);
        // three more fit the budget.
        assert!(queue.queued.load(Ordering::Relaxed) <= 3 << 20);
        let dropped = queue.dropped();
        assert!((95..=97).contains(&dropped), "{dropped}");
        out.resume();
        writing.finish(Duration::from_secs(30));
        assert_eq!(out.writes().concat().len(), (100 - dropped as usize) << 20);
        assert_eq!(
            queue.queued.load(Ordering::Relaxed),
            0,
            "every byte given back"
        );
    }

    /// stderr whose reader is gone: every write fails.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Lines lost in a failed write are counted as dropped: the log misses them as surely.
    #[test]
    fn lines_a_failed_write_loses_are_counted() {
        let (queue, writing) = start(Broken, 1024, 1 << 20).unwrap();
        for n in 0..10 {
            (&queue)
                .write_all(format!("line {n}\n").as_bytes())
                .unwrap();
        }
        writing.finish(Duration::from_secs(30));
        assert_eq!(queue.dropped(), 10);
    }

    #[test]
    fn lines_go_out_whole_in_writes_a_pipe_keeps_whole() {
        let out = Out::default();
        let (queue, writing) = start(out.clone(), 1024, 1 << 20).unwrap();
        let long = format!("{}\n", "x".repeat(5000));
        let lines: Vec<String> = (0..300)
            .map(|n| match n {
                150 => long.clone(),
                n => format!("{n:0>99}\n"),
            })
            .collect();
        for line in &lines {
            (&queue).write_all(line.as_bytes()).unwrap();
        }
        writing.finish(Duration::from_secs(30));
        let writes = out.writes();
        for write in &writes {
            let one_line = write.iter().filter(|b| **b == b'\n').count() == 1;
            assert!(write.len() <= PIPE_BUF || one_line, "{} bytes", write.len());
            assert!(write.ends_with(b"\n"), "a line cut");
        }
        assert_eq!(writes.concat(), lines.concat().into_bytes());
    }
}
