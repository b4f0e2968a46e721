//! Live progress while sending: an indicatif bar on a terminal (elapsed, messages sent, current
//! rate), plain periodic lines on stderr otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::sender::SendCounters;

/// How often plain lines are printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Shows progress until the counters say the send is done. `total` is the planned duration in
/// whole seconds, or the planned message count, whichever the run is bounded by.
pub async fn show(counters: Arc<SendCounters>, plan: Plan) {
    let start = Instant::now();
    if std::io::stderr().is_terminal() {
        let bar = match plan {
            Plan::Seconds(s) => ProgressBar::new(s.max(1)),
            Plan::Messages(m) => ProgressBar::new(m),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let template = match plan {
            Plan::Seconds(_) => "{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}",
            Plan::Messages(_) => "{elapsed_precise} [{bar:30}] {percent}%  {msg}",
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid progress template")
                .progress_chars("=> "),
        );
        let mut last = (Instant::now(), 0u64);
        while !counters.done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let sent = counters.messages();
            let rate = rate_since(&mut last, sent);
            match plan {
                Plan::Seconds(_) => bar.set_position(start.elapsed().as_secs()),
                Plan::Messages(_) => bar.set_position(sent),
            }
            bar.set_message(format!(
                "{} messages sent, {} msg/s{}",
                thousands(sent),
                thousands(rate as u64),
                retries(&counters)
            ));
        }
        bar.finish_and_clear();
    } else {
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PLAIN_EVERY) => {}
            }
            if counters.done.load(Ordering::Relaxed) {
                return;
            }
            let sent = counters.messages();
            let rate = rate_since(&mut last, sent);
            eprintln!(
                "agent-sim: {:>6.1}s  {} messages sent  {} msg/s{}",
                start.elapsed().as_secs_f64(),
                thousands(sent),
                thousands(rate as u64),
                retries(&counters)
            );
        }
    }
}

/// "  N retries" once --publish jetstream had to retry (messages count once stored).
fn retries(counters: &SendCounters) -> String {
    match counters.retries() {
        0 => String::new(),
        n => format!("  {} retries", thousands(n)),
    }
}

/// What bounds the run, for the bar's length.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    Seconds(u64),
    Messages(u64),
}

fn rate_since(last: &mut (Instant, u64), now_count: u64) -> f64 {
    let elapsed = last.0.elapsed().as_secs_f64().max(1e-6);
    let rate = (now_count - last.1) as f64 / elapsed;
    *last = (Instant::now(), now_count);
    rate
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
