//! Group commit: many concurrent requests for the same kind of write become one statement.
//!
//! Postgres spends most of a small write on fixed costs (parsing, planning, locks, the commit),
//! so N rows in one statement cost little more than one. A [`Batcher`] takes items from any number
//! of tasks and hands them to `run` in batches: each of its `parallel` loops takes whatever is
//! waiting (up to `max_batch`), runs it, and answers every item. Nothing waits on purpose: under
//! light load a batch holds one item and adds only a channel hop; under heavy load items queue
//! while a batch runs, and the next batch takes them all.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Item<In, Out> = (In, oneshot::Sender<Out>);

/// The submitting side of a group-commit batcher.
pub struct Batcher<In, Out> {
    sender: mpsc::Sender<Item<In, Out>>,
}

impl<In, Out> Clone for Batcher<In, Out> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
        }
    }
}

impl<In, Out> std::fmt::Debug for Batcher<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<In: Send + 'static, Out: Send + 'static> Batcher<In, Out> {
    /// Starts `parallel` loops on `tracker`. `run` must answer one output per input, in order.
    /// When `stop` is cancelled the loops answer what is already queued, then end; later
    /// submissions get their item back ([`Unanswered::Stopped`]) and the caller does the work
    /// itself.
    pub fn start<F, Fut>(
        tracker: &TaskTracker,
        stop: CancellationToken,
        parallel: usize,
        max_batch: usize,
        run: F,
    ) -> Self
    where
        F: Fn(Vec<In>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Out>> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(max_batch.max(1) * parallel.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let run = Arc::new(run);
        for _ in 0..parallel.max(1) {
            tracker.spawn(batch_loop(
                receiver.clone(),
                run.clone(),
                max_batch.max(1),
                stop.clone(),
            ));
        }
        Self { sender }
    }

    /// Submits one item and waits for its answer.
    ///
    /// # Errors
    /// The batcher has stopped (the item comes back), or the batch holding the item ended
    /// without answering it.
    pub async fn submit(&self, item: In) -> Result<Out, Unanswered<In>> {
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = self.sender.send((item, reply)).await {
            let (item, _) = refused.0;
            return Err(Unanswered::Stopped(item));
        }
        answer.await.map_err(|_| Unanswered::Lost)
    }
}

/// Why a submission got no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Unanswered<In> {
    /// The batcher had stopped before taking the item: here it is, to be done another way.
    Stopped(In),
    /// The batch holding the item ended without answering (its task failed): the work may or
    /// may not have been done.
    Lost,
}

async fn batch_loop<In, Out, F, Fut>(
    receiver: Arc<Mutex<mpsc::Receiver<Item<In, Out>>>>,
    run: Arc<F>,
    max_batch: usize,
    stop: CancellationToken,
) where
    F: Fn(Vec<In>) -> Fut,
    Fut: Future<Output = Vec<Out>>,
{
    loop {
        let mut items = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let first = tokio::select! {
                first = receiver.recv() => first,
                () = stop.cancelled() => {
                    // Answer what is already queued, then refuse new items.
                    receiver.close();
                    receiver.recv().await
                }
            };
            let Some(first) = first else { return };
            items.push(first);
            while items.len() < max_batch {
                match receiver.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
        }
        let (inputs, replies): (Vec<In>, Vec<oneshot::Sender<Out>>) = items.into_iter().unzip();
        let outputs = run(inputs).await;
        for (reply, output) in replies.into_iter().zip(outputs) {
            // The submitter may have gone (its request was dropped); nothing to do then.
            drop(reply.send(output));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_items_are_answered_each_with_its_own_output() {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Batcher::start(&tracker, stop.clone(), 2, 16, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move { items.into_iter().map(|i| i * 10).collect() }
        });
        let answers = futures::future::join_all((0..100).map(|i| {
            let batcher = batcher.clone();
            async move { batcher.submit(i).await }
        }))
        .await;
        assert_eq!(answers, (0..100).map(|i| Ok(i * 10)).collect::<Vec<_>>());
        assert!(batches.load(Ordering::Relaxed) <= 100);
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(
            batcher.submit(1).await,
            Err(Unanswered::Stopped(1)),
            "a stopped batcher refuses new items"
        );
    }
}
