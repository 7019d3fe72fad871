//! Progress bar for `mover send` on a terminal: bytes, files, rate, ETA. Silent when stderr is
//! not a TTY or when JSON output was asked for.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mover::Progress;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const REFRESH: Duration = Duration::from_millis(100);

pub struct Bar {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Bar {
    pub fn start(p: Arc<Progress>, enabled: bool) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return Bar { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            while !s.load(Ordering::Relaxed) {
                bar.set_length(p.bytes_total.load(Ordering::Relaxed));
                bar.set_position(p.bytes.load(Ordering::Relaxed));
                bar.set_message(format!("{} files", p.files_total.load(Ordering::Relaxed)));
                std::thread::sleep(REFRESH);
            }
            bar.finish_and_clear();
        });
        Bar {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
