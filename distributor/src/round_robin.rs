//! Several subscriptions read as one stream, taken in turn ([`RoundRobin`]): what the event loop
//! polls for the control subjects and the ingest subjects on every turn.
//!
//! `futures::stream::SelectAll` does the same job through a `FuturesUnordered`, which re-queues
//! each stream and wraps its waker on every poll: with it, the ingest `SelectAll` alone cost
//! ~2,100 instructions a single-message packet in callgrind (of ~34,000 the distributor spends
//! per packet). A loop over two or three streams costs a poll each; with it (and `CoreSources`
//! keeping its futures from one turn to the next) a packet costs ~2,160 fewer (BENCHMARKS.md).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

/// Streams polled in turn: after an item from one, the next poll starts at the one after it, so
/// a busy stream cannot starve the others. Ends when every stream has ended.
#[derive(Debug)]
pub(crate) struct RoundRobin<S> {
    /// `None` once that stream ended.
    streams: Vec<Option<S>>,
    /// Where the next poll starts.
    next: usize,
}

impl<S> RoundRobin<S> {
    pub(crate) fn new() -> Self {
        RoundRobin {
            streams: Vec::new(),
            next: 0,
        }
    }

    pub(crate) fn push(&mut self, stream: S) {
        self.streams.push(Some(stream));
    }

    /// The streams that have not ended.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.streams.iter_mut().flatten()
    }
}

impl<S> FromIterator<S> for RoundRobin<S> {
    fn from_iter<I: IntoIterator<Item = S>>(streams: I) -> Self {
        RoundRobin {
            streams: streams.into_iter().map(Some).collect(),
            next: 0,
        }
    }
}

impl<S: Stream + Unpin> Stream for RoundRobin<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let n = this.streams.len();
        let mut open = false;
        for i in 0..n {
            let at = (this.next + i) % n;
            let Some(stream) = &mut this.streams[at] else {
                continue;
            };
            match stream.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => {
                    this.next = (at + 1) % n;
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => this.streams[at] = None,
                Poll::Pending => open = true,
            }
        }
        if open {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    #[tokio::test]
    async fn takes_turns_and_ends_when_all_end() {
        let mut all: RoundRobin<_> = [
            stream::iter(vec![1, 2, 3]).boxed(),
            stream::iter(vec![10]).boxed(),
            stream::iter(vec![20, 21]).boxed(),
        ]
        .into_iter()
        .collect();
        let items: Vec<i32> = (&mut all).collect().await;
        assert_eq!(items, vec![1, 10, 20, 2, 21, 3]);
        assert_eq!(all.next().await, None);
        assert_eq!(all.iter_mut().count(), 0, "every stream ended");
    }

    #[tokio::test]
    async fn a_pending_stream_does_not_end_it() {
        let mut all = RoundRobin::new();
        all.push(stream::iter(vec![1]).boxed());
        all.push(stream::pending().boxed());
        assert_eq!(all.next().await, Some(1));
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), all.next()).await;
        assert!(more.is_err(), "still open: one stream may yet yield");
        assert_eq!(all.iter_mut().count(), 1);
        assert!(RoundRobin::<stream::Empty<i32>>::new()
            .next()
            .await
            .is_none());
    }
}
