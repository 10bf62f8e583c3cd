//! Progress of the long commands (`replay`, `restore`, `verify`, `migrate`; `load` has its own): a bar with
//! position, rate and ETA on a terminal; on anything else (a pipe, a log, CI) a plain line every
//! ten seconds. Both go to stderr, so what a command prints on stdout stays its report. A
//! command ends with [`Progress::finish`], one summary line.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// The progress of one command.
#[derive(Debug)]
pub struct Progress {
    what: String,
    unit: &'static str,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Progress {
    /// Progress of `what`, out of `total` `unit`s (0: unknown).
    pub fn new(what: &str, total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            let template = format!("{what} {{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}");
            b.set_style(
                indicatif::ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let started = Instant::now();
        Self {
            what: what.to_owned(),
            unit,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started,
            bar,
            last_line: Mutex::new(started),
        }
    }

    /// `n` units done so far.
    pub fn set(&self, n: u64) {
        self.done.store(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_position(n);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= PLAIN_EVERY {
            *last = Instant::now();
            eprintln!("{}", self.line(n));
        }
    }

    /// A new total (when it becomes known, or grows).
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    fn line(&self, n: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let total = self.total.load(Ordering::Relaxed);
        let of = if total > 0 { format!(" of {total}") } else { String::new() };
        let eta = match (total > n, rate > 0.0) {
            (true, true) => format!(", about {:.0} s left", (total - n) as f64 / rate),
            _ => String::new(),
        };
        format!("{}: {n}{of} {} in {secs:.1} s ({rate:.0}/s){eta}", self.what, self.unit)
    }

    /// Ends the bar and writes the summary line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let n = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
        eprintln!("{}: {n} {} in {secs:.1} s ({rate:.0}/s)", self.what, self.unit);
    }

    /// Runs `poll` every 200 ms on a thread and reports what it returns, until the returned
    /// guard is dropped: for work whose progress is read from outside (a read model's
    /// checkpoint).
    pub fn poll(self: &std::sync::Arc<Self>, poll: impl Fn() -> Option<u64> + Send + 'static) -> Poller {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let me = self.clone();
        let handle = std::thread::spawn(move || loop {
            if let Some(n) = poll() {
                me.set(n);
            }
            match stopped.recv_timeout(Duration::from_millis(200)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => break,
            }
        });
        Poller { stop: Some(stop), handle: Some(handle) }
    }
}

/// Stops a [`Progress::poll`] thread when dropped.
#[derive(Debug)]
pub struct Poller {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
